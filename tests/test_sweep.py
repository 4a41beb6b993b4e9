"""Sweeps on a real local Ray and a real MLflow store: Tune's searches and schedulers over tiny
GPT trials (in-process single-worker trials, nested 2-worker Ray Train trials), the parent and
child runs they leave in MLflow, the comparison table, and resume after a killed driver."""

import csv
import io
import itertools
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import ray
import yaml
from ray import tune

from browser import browse, needs_browser, ui_server
from conftest import GENTRAIN, gentrain, wait_for
from gentrain import spec as spec_module
from gentrain import sweep, sweep_search, tracking
from gentrain.errors import GentrainError, SpecError
from gentrain.spec_sweep import SweepSection

STEPS = 6
TINY_GPT = {
    "name": "sweep-test",
    "model": {"family": "gpt", "flavor": "debug"},
    "data": {"source": "builtin:python_docs", "tokenizer": "byte", "seq_len": 32, "batch_size": 8},
    "train": {
        "workers": 1,
        "max_steps": STEPS,
        "log_every": 1,
        "eval_every": 2,
        "checkpoint_every": 2,
    },
    "optim": {"name": "adamw", "lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
}


def _spec(tmp_path: Path, sweep_section: dict, **train):
    raw = {
        **TINY_GPT,
        "train": {**TINY_GPT["train"], **train},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "storage": {"path": str(tmp_path / "checkpoints")},
        "sweep": {"metric": "perplexity", **sweep_section},
    }
    return spec_module.validate(raw)


def _children(result) -> list:
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]


def _sampled(run, key: str) -> str:
    return run.data.tags[f"gentrain.sampled.{key}"]


def _steps(client, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


@pytest.fixture(scope="module")
def local_ray():
    yield  # the first sweep starts the embedded Ray; the module's other sweeps reuse it
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(local_ray, tmp_path_factory, new_store):
    tmp = tmp_path_factory.mktemp("grid")
    new_store(tmp)
    space = {"optim.lr": {"grid": [1e-3, 1e-2]}, "train.seed": {"grid": [0, 1]}}
    spec = _spec(tmp, {"search": "grid", "concurrency": 2, "space": space})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", f"id-{PLANTED}")
        env.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
        env.setenv("MLFLOW_TRACKING_PASSWORD", PLANTED)
        return sweep.run(spec)


PLANTED = "planted-secret-7213"  # in the environment of the `grid` sweep: Ray's logs never see it


def test_grid_runs_the_cartesian_product_one_child_run_each(grid):
    children = _children(grid)
    combos = sorted((_sampled(r, "optim.lr"), _sampled(r, "train.seed")) for r in children)
    expected = sorted(itertools.product(["0.001", "0.01"], ["0", "1"]))
    assert combos == expected  # each combination once, no more
    assert len({r.data.tags["gentrain.trial_id"] for r in children}) == 4
    client = mlflow.MlflowClient(grid.tracking_uri)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["optim.lr"] == _sampled(run, "optim.lr")  # a full gentrain run
        # each trial's own process beats for it
        assert json.loads(run.data.tags["gentrain.owner"])["pid"] != os.getpid()
        assert "gentrain.heartbeat" in run.data.tags
        assert _steps(client, run.info.run_id, "loss") == list(range(1, STEPS + 1))
        assert _steps(client, run.info.run_id, "perplexity") == [2, 4, 6]
    experiment_id = children[0].info.experiment_id
    models = client.search_logged_models([experiment_id])
    assert [m.name for m in models].count("model") == 4, "each trial exports its model"


def test_no_credential_reaches_rays_logs(grid):
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [path for path in (session / "logs").rglob("*") if path.is_file()]
    assert any(path.name.startswith("runtime_env_agent") for path in logs)
    assert [path for path in logs if PLANTED.encode() in path.read_bytes()] == []


def test_the_parent_run_holds_the_sweep_and_its_best_trial(grid):
    client = mlflow.MlflowClient(grid.tracking_uri)
    parent = client.get_run(grid.parent_run_id)
    children = _children(grid)
    best = min(children, key=lambda r: r.data.metrics["perplexity"])
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["gentrain.owner"])["pid"] == os.getpid(), "the driver's"
    assert "gentrain.heartbeat" in parent.data.tags
    assert parent.data.params["sweep.search"] == "grid"
    assert parent.data.params["sweep.space.optim.lr.grid"] == "[0.001, 0.01]"
    assert parent.data.metrics["best_perplexity"] == best.data.metrics["perplexity"]
    assert parent.data.tags["gentrain.best_run_id"] == best.info.run_id == grid.best_run_id
    best_config = yaml.safe_load(parent.data.tags["gentrain.best_config"])
    assert best_config == {
        "optim.lr": _sampled(best, "optim.lr"),
        "train.seed": _sampled(best, "train.seed"),
    }
    table = client.download_artifacts(grid.parent_run_id, "trials.csv")
    rows = list(csv.DictReader(io.StringIO(Path(table).read_text())))
    assert sorted(row["run_id"] for row in rows) == sorted(r.info.run_id for r in children)
    assert rows[0]["run_id"] == best.info.run_id  # best first
    assert {"optim.lr", "train.seed", "perplexity"} <= set(rows[0])
    assert sorted(t.status for t in grid.trials) == ["FINISHED"] * 4


def test_runs_compare_prints_a_sweeps_trials_best_first(grid, tmp_path):
    result = gentrain(
        "runs",
        "compare",
        grid.experiment,
        "--parent",
        grid.parent_run_id,
        "--tracking-uri",
        grid.tracking_uri,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    children = sorted(_children(grid), key=lambda r: r.data.metrics["perplexity"])
    lines = result.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if r.info.run_id[:8] in line) for r in children]
    assert order == sorted(order), result.stdout
    assert "optim.lr" in result.stdout and "train.seed" in result.stdout
    with pytest.raises(SpecError, match="no experiment 'no-such-experiment'"):
        tracking.compare(uri=grid.tracking_uri, experiment="no-such-experiment")


@needs_browser
def test_the_sweeps_view_lists_its_trials_best_first_with_a_parallel_chart(grid, tmp_path):
    with ui_server(tmp_path, grid.tracking_uri) as address:
        page = browse(f"{address}/{grid.view}")
    assert f"sweep sweep-test: trials by {grid.metric}" in page.text, page.text[:3000]
    best_first = sorted(_children(grid), key=lambda r: r.data.metrics[grid.metric])
    shown = [page.text.find(run.info.run_name) for run in best_first]
    assert -1 not in shown and shown == sorted(shown), "every trial listed, best first"
    assert "Parallel Coordinates" in page.text and "optim.lr" in page.text


def _branin(config: dict) -> float:
    x1, x2 = config["x1"], config["x2"]
    a, b, c = 1.0, 5.1 / (4 * math.pi**2), 5 / math.pi
    return a * (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


BRANIN = {"x1": {"uniform": [-5, 10]}, "x2": {"uniform": [0, 15]}}


def _random_configs(seed: int, tmp_path: Path) -> list[tuple[float, float]]:
    """The configs Tune's variant generator makes for a random sweep (no trial needs to run)."""
    section = SweepSection(search="random", trials=4, concurrency=4, seed=seed, space=BRANIN)
    generator = sweep_search.make_search(section)
    experiment = tune.Experiment(
        "random",
        lambda config: None,
        config=sweep_search.param_space(section),
        num_samples=section.trials,
        storage_path=str(tmp_path),
    )
    generator.add_configurations(experiment)
    configs = []
    while (trial := generator.next_trial()) is not None:
        configs.append((trial.config["x1"], trial.config["x2"]))
    return configs


def _bayesian_configs(seed: int, sampler: str) -> list[tuple[float, float]]:
    section = SweepSection(search="bayesian", sampler=sampler, trials=6, seed=seed, space=BRANIN)
    searcher = sweep_search.make_search(section)
    searcher.set_search_properties("loss", "min", sweep_search.param_space(section))
    configs = []
    for trial in range(section.trials):
        config = searcher.suggest(str(trial))
        searcher.on_trial_complete(str(trial), {"loss": _branin(config)})
        configs.append((config["x1"], config["x2"]))
    return configs


def test_random_search_is_reproducible_under_a_seed(tmp_path):
    first = _random_configs(3, tmp_path / "a")
    assert len(set(first)) == 4
    assert _random_configs(3, tmp_path / "b") == first
    assert _random_configs(4, tmp_path / "c") != first


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_bayesian_search_is_reproducible_under_a_seed(sampler):
    first = _bayesian_configs(3, sampler)
    assert len(set(first)) == 6
    assert _bayesian_configs(3, sampler) == first
    assert _bayesian_configs(4, sampler) != first


def test_asha_stops_the_clearly_worse_trials_early(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    # Trials run one after another, the good one first: the others fall below its first rung.
    space = {"optim.lr": {"grid": [1e-2, 1e-7, 2e-7]}}
    spec = _spec(
        tmp_path,
        {"search": "grid", "scheduler": "asha", "asha": {"grace_period": 1}, "space": space},
    )
    result = sweep.run(spec)
    client = mlflow.MlflowClient(result.tracking_uri)
    by_lr = {_sampled(r, "optim.lr"): r for r in _children(result)}
    assert by_lr["0.01"].info.status == "FINISHED"
    assert _steps(client, by_lr["0.01"].info.run_id, "loss")[-1] == STEPS
    for lr in ("1e-07", "2e-07"):
        stopped = by_lr[lr]
        assert stopped.info.status == "KILLED", lr
        assert "stopped early by asha" in stopped.data.tags["gentrain.failure"]
        assert _steps(client, stopped.info.run_id, "loss")[-1] < STEPS
    assert result.best_run_id == by_lr["0.01"].info.run_id


def test_a_failing_trial_ends_failed_and_the_sweep_goes_on(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    space = {"optim.lr": {"grid": [1e30, 1e-3]}}  # a learning rate of 1e30: a NaN loss at once
    result = sweep.run(_spec(tmp_path, {"search": "grid", "concurrency": 2, "space": space}))
    by_lr = {float(_sampled(r, "optim.lr")): r for r in _children(result)}
    failed, fine = by_lr[1e30], by_lr[1e-3]
    assert failed.info.status == "FAILED"
    assert "the loss became" in failed.data.tags["gentrain.failure"]
    assert "(train.on_nan: stop)" in failed.data.tags["gentrain.failure"]
    error = _artifact_text(result.tracking_uri, failed.info.run_id, "error.txt", tmp_path)
    assert error.startswith("Traceback") and "the loss became" in error
    assert fine.info.status == "FINISHED" and result.best_run_id == fine.info.run_id
    assert sorted(t.status for t in result.trials) == ["FAILED", "FINISHED"]


def test_a_sweep_that_fails_beneath_gentrain_keeps_its_traceback(local_ray, new_store, tmp_path):
    """The caller's own code fails (a closed pipe under `gentrain sweep | head`): the sweep ends
    FAILED, and its parent run keeps the traceback (error.txt) beside the one-line reason."""
    new_store(tmp_path)
    spec = _spec(tmp_path, {"search": "grid", "space": {"optim.lr": {"grid": [1e-3]}}})

    def closed_pipe(trial) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(GentrainError, match=r"^sweep \w+ failed: .*Broken pipe") as failed:
        sweep.run(spec, on_trial=closed_pipe)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(spec.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`gentrain.sweep` != ''")
    assert parent.info.run_id in str(failed.value) and parent.info.status == "FAILED"
    assert "Broken pipe" in parent.data.tags["gentrain.failure"]
    error = _artifact_text(client.tracking_uri, parent.info.run_id, "error.txt", tmp_path)
    assert "Traceback" in error and "BrokenPipeError" in error and "closed_pipe" in error


def _artifact_text(uri: str, run_id: str, path: str, tmp_path: Path) -> str:
    local = mlflow.MlflowClient(uri).download_artifacts(run_id, path, str(tmp_path))
    return Path(local).read_text()


def test_pbt_exploits_a_better_trials_checkpoint(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    section = {
        "search": "random",
        "trials": 2,
        "concurrency": 2,
        "seed": 1,
        "scheduler": "pbt",
        "pbt": {"perturbation_interval": 1, "quantile_fraction": 0.5},
        "space": {"optim.lr": {"loguniform": [1e-7, 1e-2]}},
    }
    result = sweep.run(_spec(tmp_path, section, max_steps=24))  # long enough to overlap
    children = _children(result)
    assert len(children) == 2  # `trials` trials, each one run however often it was exploited
    sources = [r.data.tags.get("gentrain.checkpoint_from") for r in children]
    exploits = [(run, source) for run, source in zip(children, sources, strict=True) if source]
    assert exploits, "no trial loaded another's checkpoint"
    ids = {r.info.run_id for r in children}
    for run, source in exploits:
        donor = source.split()[0]
        assert donor in ids and donor != run.info.run_id
    assert all(r.info.status == "FINISHED" for r in children)


def test_distributed_trials_run_nested_ray_train_workers(local_ray, new_store, tmp_path):
    new_store(tmp_path)
    section = {
        "search": "bayesian",
        "trials": 1,
        "seed": 0,
        "space": {"optim.lr": {"loguniform": [1e-3, 1e-2]}},
    }
    started = time.time()
    result = sweep.run(_spec(tmp_path, section, workers=2, max_steps=4))
    children = _children(result)
    assert len(children) == 1
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["gentrain.workers"] == "2"
        # the nested Ray Train run keeps its checkpoints under the child run's name, each rank's
        rng = {p.name for p in (tmp_path / "checkpoints" / run.info.run_id).rglob("rng_rank*.pt")}
        assert rng == {"rng_rank0.pt", "rng_rank1.pt"}
    # Tune stops trials at will: a trial's run keeps Ray Train's placement group cleaner
    assert "PlacementGroupCleaner" in _actors_started_since(started)


def _actors_started_since(seconds: float) -> set[str]:
    actors = ray._private.state.actors().values()
    return {a["ActorClassName"] for a in actors if a["StartTime"] / 1000 >= seconds}


def test_resume_after_the_sweep_driver_is_killed(new_store, tmp_path):
    spec = {
        **TINY_GPT,
        "train": {**TINY_GPT["train"], "max_steps": 40, "eval_every": 10, "checkpoint_every": 10},
        "sweep": {
            "search": "grid",
            "metric": "loss",
            "space": {"optim.lr": {"grid": [3e-3, 1e-3, 3e-4]}},
        },
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    uri = new_store(tmp_path)  # the sweep's default store, in its working directory
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(
            [*GENTRAIN, "sweep", "sweep.yaml"],
            cwd=tmp_path,
            stdout=log,
            stderr=log,
            env={**os.environ, "MLFLOW_TRACKING_URI": "", "RAY_ADDRESS": ""},
        )
    try:
        # trials take seconds: watch the checkpoint files (cheap), not MLflow, and often
        storage = tmp_path / ".gentrain" / "checkpoints"
        ended = driver.poll
        wait_for(lambda: _midway(storage) or ended() is not None, 300, "a trial midway", 0.05)
        assert ended() is None, "the sweep ended before it could be killed midway"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    client = mlflow.MlflowClient(uri)
    (parent,) = _runs(client, parent=True)
    done_before = {
        r.info.run_id: r.info.end_time for r in _runs(client) if r.info.status == "FINISHED"
    }

    resumed = gentrain("sweep", "sweep.yaml", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    (after,) = _runs(client, parent=True)
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    children = _runs(client)
    assert sorted(_sampled(r, "optim.lr") for r in children) == ["0.0003", "0.001", "0.003"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert _steps(client, run.info.run_id, "loss") == list(range(1, 41)), "each step once"
    for run_id, end_time in done_before.items():  # not run again
        assert client.get_run(run_id).info.end_time == end_time


def _runs(client, *, parent: bool = False) -> list:
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if ("mlflow.parentRunId" in r.data.tags) != parent]


def _midway(storage: Path) -> bool:
    """A trial after the first (so one trial is done: they run one at a time) holds its
    checkpoint of step 20 or 30 of 40: it is part way."""
    for trial in storage.glob("*/trial_*"):
        index = int(trial.name.split("_")[2])
        steps = {int(c.name.removeprefix("checkpoint_")) for c in trial.glob("checkpoint_*")}
        if index >= 1 and max(steps, default=-1) in (1, 2):
            return True
    return False
