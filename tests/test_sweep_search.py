"""What makes a sweep pay for itself: Bayesian search told of trials a scheduler stopped (pruned)
and of an earlier sweep's trials (warm start), a budget of training steps over all trials, and
the best trial written back as a job spec. On real Optuna, Ray Tune and MLflow stores."""

import math

import mlflow
import optuna
import pytest
import ray
import yaml
from ray import tune

from conftest import gentrain
from gentrain import sweep, sweep_search
from gentrain.errors import SpecError
from gentrain.spec_sweep import SweepSection
from gentrain.warm_start import EarlierTrial
from test_sweep import STEPS, _children, _sampled, _spec

State = optuna.trial.TrialState


@pytest.fixture(scope="module")
def local_ray():
    yield  # the first sweep starts the embedded Ray; the module's other sweeps reuse it
    ray.shutdown()


def _searcher(space: dict, *, earlier=(), **section):
    section = SweepSection(search="bayesian", **{"trials": 6, "space": space, **section})
    searcher = sweep_search.make_search(section, max_steps=STEPS, earlier=list(earlier))
    searcher.set_search_properties("loss", "min", sweep_search.param_space(section))
    return searcher


def test_a_trial_stopped_before_its_last_step_is_pruned_for_optuna():
    searcher = _searcher({"x": {"uniform": [0, 1]}})
    searcher.suggest("stopped"), searcher.suggest("finished")
    searcher.on_trial_result("stopped", {"loss": 3.0, "step": 2})
    searcher.on_trial_result("stopped", {"step": 3})  # a checkpoint's report: no metric
    searcher.on_trial_complete("stopped", {"loss": 3.0, "step": 2})
    for step in (2, 4, 6):
        searcher.on_trial_result("finished", {"loss": 1 / step, "step": step})
    searcher.on_trial_complete("finished", {"loss": 1 / 6, "step": STEPS})
    stopped, finished = searcher._ot_study.trials
    assert stopped.state == State.PRUNED and stopped.intermediate_values == {2: 3.0}
    assert finished.state == State.COMPLETE and finished.value == 1 / 6
    assert finished.intermediate_values == {2: 1 / 2, 4: 1 / 4, 6: 1 / 6}


@pytest.mark.parametrize(
    ("tpe", "concurrency", "expected"),
    [
        ({}, 1, (False, False)),
        ({}, 2, (False, True)),  # constant liar: on for concurrent trials by default
        ({"multivariate": True, "constant_liar": False}, 2, (True, False)),
    ],
)
def test_tpes_options_reach_optunas_sampler(tpe, concurrency, expected):
    sampler = _searcher({"x": {"uniform": [0, 1]}}, tpe=tpe, concurrency=concurrency)._sampler
    assert (sampler._multivariate, sampler._constant_liar) == expected


def test_tpe_options_are_refused_without_tpe():
    with pytest.raises(ValueError, match="tpe is set but search is not bayesian"):
        SweepSection(search="random", tpe={"multivariate": True}, space={"x": {"int": [0, 3]}})


def test_a_warm_start_tells_optuna_the_earlier_trials_and_draws_none_again():
    space = {"w": {"choice": [16, 32]}, "x": {"uniform": [0, 1]}}
    earlier = [
        EarlierTrial({"w": 16, "x": 0.5}, 2.0, finished=True, history={2: 3.0, 6: 2.0}),
        EarlierTrial({"w": 32, "x": 0.25}, 5.0, finished=False, history={2: 5.0}),
    ]
    searcher = _searcher(space, earlier=earlier)
    told = searcher._ot_study.trials
    assert [(t.state, t.params, t.intermediate_values) for t in told] == [
        (State.COMPLETE, {"w": 16, "x": 0.5}, {2: 3.0, 6: 2.0}),
        (State.PRUNED, {"w": 32, "x": 0.25}, {2: 5.0}),
    ]
    assert told[0].value == 2.0
    # only the choice searched, the earlier one ran: each new trial draws the other
    ran = EarlierTrial({"w": 16}, 2.0, finished=True, history={})
    chosen = _searcher({"w": {"choice": [16, 32]}}, earlier=[ran])
    for trial in map(str, range(4)):
        assert chosen.suggest(trial) == {"w": 32}
        chosen.on_trial_complete(trial, {"loss": 1.0, "step": STEPS})


@pytest.mark.parametrize("search", ["random", "grid"])
def test_the_configurations_a_sweep_runs_are_those_tunes_generator_draws(search, tmp_path):
    space = (
        {"x": {"grid": [1, 2, 3]}, "y": {"grid": ["a", "b"]}}
        if search == "grid"
        else {"x": {"uniform": [-5, 10]}, "y": {"choice": ["a", "b"]}}
    )
    # as many at once as there are: the generator holds back trials beyond its concurrency
    section = SweepSection(search=search, trials=5, seed=3, concurrency=6, space=space)
    generator = sweep_search.make_search(section)
    generator.add_configurations(
        tune.Experiment(
            "drawn",
            lambda config: None,
            config=sweep_search.param_space(section),
            num_samples=1 if search == "grid" else section.trials,
            storage_path=str(tmp_path),
        )
    )
    drawn = []
    while (trial := generator.next_trial()) is not None:
        drawn.append(trial.config)
    assert sweep_search.configurations(section) == drawn
    assert len(drawn) == (6 if search == "grid" else 5)


def _ran(result) -> list[dict]:
    runs = sorted(_children(result), key=lambda run: run.info.start_time)
    return [{"optim.lr": float(_sampled(run, "optim.lr"))} for run in runs]


def test_a_random_sweep_warm_started_skips_the_configurations_already_run(
    local_ray, new_store, tmp_path
):
    new_store(tmp_path)
    space = {"optim.lr": {"loguniform": [1e-4, 1e-2]}}
    first = sweep.run(_spec(tmp_path, {"trials": 2, "space": space}))
    longer = {"trials": 3, "space": space, "warm_start": first.parent_run_id}
    notes = []
    second = sweep.run(_spec(tmp_path, longer), on_note=notes.append)
    assert notes == [
        f"warm start: 2 of the 2 trials of {first.parent_run_id} ended in this sweep's space"
    ]
    drawn = sweep_search.configurations(SweepSection(trials=3, space=space))
    assert _ran(first) == drawn[:2]  # under the same seed: the same draws
    assert _ran(second) == drawn[2:]  # the third alone is new

    # the Bayesian sampler learns from both sweeps (the experiment) and runs a new configuration
    bayesian = {"search": "bayesian", "trials": 1, "space": space, "warm_start": "sweep-test"}
    notes.clear()
    third = sweep.run(_spec(tmp_path, bayesian), on_note=notes.append)
    assert notes == ["warm start: 3 of the 3 trials of sweep-test ended in this sweep's space"]
    assert _ran(third)[0] not in drawn


def test_a_grid_warm_started_runs_what_it_lacks_and_refuses_when_nothing_is_left(
    local_ray, new_store, tmp_path
):
    new_store(tmp_path)
    grid = {"search": "grid", "space": {"optim.lr": {"grid": [1e-3]}}}
    first = sweep.run(_spec(tmp_path, grid))
    wider = {"search": "grid", "space": {"optim.lr": {"grid": [1e-3, 2e-3]}}}
    second = sweep.run(_spec(tmp_path, {**wider, "warm_start": first.parent_run_id}))
    assert _ran(second) == [{"optim.lr": 2e-3}]
    client = mlflow.MlflowClient(first.tracking_uri)
    experiment = client.get_experiment_by_name(first.experiment).experiment_id
    before = len(client.search_runs([experiment]))
    with pytest.raises(SpecError, match=r"sweep.warm_start: sweep-test ran every configuration"):
        sweep.run(_spec(tmp_path, {**wider, "warm_start": "sweep-test"}))
    assert len(client.search_runs([experiment])) == before  # nothing started
    with pytest.raises(SpecError, match=r"sweep.warm_start: no sweep's parent run and no "):
        sweep.run(_spec(tmp_path, {**wider, "warm_start": "no-such-sweep"}))


def test_bayesian_search_with_asha_stays_within_a_budget_of_steps(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    budget = 16  # trials of STEPS (6) steps: two whole trials and part of a third at most
    section = {
        "search": "bayesian",
        "scheduler": "asha",
        "trials": 20,
        "budget_steps": budget,
        "space": {"optim.lr": {"loguniform": [1e-7, 1e-2]}},
    }
    result = sweep.run(_spec(tmp_path, section))
    client = mlflow.MlflowClient(result.tracking_uri)
    children = _children(result)
    spent = [
        max(m.step for m in client.get_metric_history(r.info.run_id, "loss")) for r in children
    ]
    assert budget <= sum(spent) < budget + STEPS, spent
    assert len(children) < section["trials"]
    for run in children:
        assert run.info.status in ("FINISHED", "KILLED"), run.info.status
        if run.info.status == "KILLED":
            why = run.data.tags["gentrain.failure"]
            assert "stopped early by asha" in why or f"budget_steps ({budget}) ran out" in why, why
    assert math.isfinite(result.best_value)


def test_the_best_trial_becomes_a_job_that_remembers_its_sweep(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    space = {"optim.lr": {"grid": [1e-7, 1e-2]}}
    result = sweep.run(_spec(tmp_path, {"search": "grid", "space": space}))
    uri = ["--tracking-uri", result.tracking_uri]
    printed = gentrain("runs", "best", "sweep-test", *uri, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    job = yaml.safe_load(printed.stdout)
    assert "sweep" not in job and job["optim"]["lr"] == 1e-2  # the better of the two
    assert f"best trial: run {result.best_run_id} of sweep {result.parent_run_id}" in printed.stderr
    assert job["tracking"]["tags"] == {
        "gentrain.from_sweep": result.parent_run_id,
        "gentrain.from_trial": result.best_run_id,
    }
    written = gentrain(
        "runs", "best", "sweep-test", "--parent", result.parent_run_id, "--out", "best.yaml",
        *uri, cwd=tmp_path,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert yaml.safe_load((tmp_path / "best.yaml").read_text()) == job
    assert "train it: gentrain run best.yaml" in written.stdout

    trained = gentrain("run", "best.yaml", "--set", "train.max_steps=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    client = mlflow.MlflowClient(result.tracking_uri)
    (run,) = [
        r
        for r in _all_runs(client, result.experiment)
        if "mlflow.parentRunId" not in r.data.tags and "gentrain.sweep" not in r.data.tags
    ]
    assert run.data.tags["gentrain.from_sweep"] == result.parent_run_id
    assert run.data.tags["gentrain.from_trial"] == result.best_run_id

    missing = gentrain("runs", "best", "no-such-experiment", *uri, cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == (
        f"error: EXPERIMENT: no experiment 'no-such-experiment' in {result.tracking_uri}"
    )


def _all_runs(client, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.parametrize(
    ("section", "startup"),
    [
        ({"trials": 64}, 10),  # a third of the trials, 10 at most
        ({"trials": 64, "budget_steps": 12 * STEPS}, 4),  # a third of the 12 the budget pays for
        ({"trials": 3}, 2),  # 2 at least
    ],
)
def test_optunas_random_start_is_a_third_of_the_trials_the_sweep_pays_for(section, startup):
    sampler = _searcher({"x": {"uniform": [0, 1]}}, **section)._sampler
    assert sampler._n_startup_trials == startup
