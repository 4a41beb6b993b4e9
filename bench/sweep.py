"""Sweeps on this machine, through `gentrain sweep`'s own path (embedded Ray, Ray Tune, MLflow):
trial overhead next to bare Ray Tune, and search efficiency (Bayesian versus random, ASHA versus
no scheduler).

    python bench/sweep.py [--seeds N] [--trials K] [--quick] [--json PATH]

Trial overhead: each trial's wall time (its MLflow run, from before its `fit` to after) minus its
training time (its median optimizer step, from samples_per_sec at every step, times its steps),
for trials of 1 and of 2 workers, median over the trials of one sweep. Bare Ray Tune runs trials
of a function that only waits out that training time (for 2 workers, in a bare Ray Train run
whose workers first wrap a linear layer in DDP, as any DDP loop does), timed the same
way inside the trial, so its figures are Tune's, Ray Train's and DDP's own.
Search efficiency: the best value found after k trials, median over seeds, on the Branin function
(global minimum 0.397887) and on a tiny GPT's held-out perplexity (jobs/gpt_python_docs.yaml,
debug flavor, learning rate x width); ASHA versus no scheduler at equal total training steps.
Equal budget (--parts budget): random, random + ASHA, TPE, TPE + ASHA and grid each get the same
total training steps (sweep.budget_steps) on a tiny GPT over learning rate x width x warmup;
the median over seeds of each one's best held-out perplexity, and of the steps it needed to
first reach random search's final best.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BRANIN_MINIMUM = 0.397887


def gpt_sweep(
    workdir: Path,
    sweep: dict,
    optim: dict | None = None,
    evaluation: dict | None = None,
    **train,
) -> dict:
    """A sweep of jobs/gpt_python_docs.yaml at the debug flavor, trials of `train`."""
    from gentrain import spec

    raw = spec.read_yaml(REPO / "jobs" / "gpt_python_docs.yaml")
    raw["model"]["flavor"] = "debug"
    raw["data"].update(seq_len=64, batch_size=16)
    raw["train"].update(workers=1, max_steps=40, log_every=1, eval_every=10, checkpoint_every=40)
    raw["train"].update(train)
    raw["optim"].update(warmup_steps=0, schedule="constant")
    raw["optim"].update(optim or {})
    raw["eval"].update(evaluation or {})
    raw["tracking"] = {"uri": f"sqlite:///{workdir / 'mlflow.db'}"}
    raw["storage"] = {"path": str(workdir / "checkpoints")}
    raw["sweep"] = {"metric": "perplexity", **sweep}
    return spec.validate(raw)


def _children(result) -> list:
    import mlflow

    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(result.experiment)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]


def _training_seconds(client, run_id: str, batch: int) -> float:
    """The time a run's optimizer steps take on their own: its median step (from samples_per_sec,
    logged every step) times its steps. Steps slowed by work beside them (a thread of rank 0's)
    count as overhead, not training."""
    steps = [batch / m.value for m in client.get_metric_history(run_id, "samples_per_sec")]
    return statistics.median(steps) * len(steps)


def trial_overhead(workers: int, trials: int, metrics: list[str] | None = None) -> list[dict]:
    """Each trial of a gentrain sweep of `trials`: its wall time (its MLflow run's start to end,
    which spans the whole trial) and its training seconds; `metrics`: the trials' eval.metrics
    instead of the job's."""
    import mlflow

    from gentrain import cluster, sweep

    cluster.connect()
    with tempfile.TemporaryDirectory() as tmp:
        grid = [round(1e-3 * (i + 1), 6) for i in range(trials)]
        job = gpt_sweep(
            Path(tmp),
            {"search": "grid", "space": {"optim.lr": {"grid": grid}}},
            evaluation={"metrics": metrics} if metrics else None,
            workers=workers,
            eval_every=40,
        )
        result = sweep.run(job)
        client = mlflow.MlflowClient(result.tracking_uri)
        return [
            {
                "wall": (run.info.end_time - run.info.start_time) / 1000,
                "training": _training_seconds(client, run.info.run_id, job.data.batch_size),
            }
            for run in _children(result)
        ]


def bare_tune_overhead(workers: int, trials: int, seconds: float) -> list[float]:
    """Each trial's wall time beyond `seconds` of work, Ray Tune (and for 2 workers Ray Train)
    alone: timed inside the trial, as gentrain's are."""
    from ray import tune

    from gentrain import cluster

    cluster.connect()
    function = _wait_in_train if workers > 1 else _wait
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times"
        times.mkdir()
        tuner = tune.Tuner(
            tune.with_resources(function, {"CPU": 1} if workers == 1 else {"memory": 2**28}),
            param_space={
                "seconds": seconds,
                "workers": workers,
                "times": str(times),
                "i": tune.grid_search(list(range(trials))),
            },
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=tmp, verbose=0),
        )
        tuner.fit()
        return [float(path.read_text()) - seconds for path in times.iterdir()]


def _wait(config: dict) -> None:
    from ray import tune

    start = time.perf_counter()
    time.sleep(config["seconds"])
    _record(config, time.perf_counter() - start)
    tune.report({"perplexity": 1.0})


def _record(config: dict, seconds: float) -> None:
    if "times" in config:
        (Path(config["times"]) / str(config["i"])).write_text(str(seconds))


def _wait_in_train(config: dict) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    def work(inner: dict) -> None:
        import ray.train
        import torch

        # The least a DDP loop does: wrap its model in DDP (the first wrap in a process imports
        # torch._dynamo, 1.2 s here alone), as gentrain does; then its training, waited out.
        torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
        time.sleep(inner["seconds"])
        ray.train.report({"perplexity": 1.0})

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        TorchTrainer(
            work,
            train_loop_config={"seconds": config["seconds"]},
            scaling_config=ScalingConfig(num_workers=config["workers"]),
            run_config=RunConfig(storage_path=tmp, callbacks=[TuneReportCallback()]),
        ).fit()
    _record(config, time.perf_counter() - start)


def branin(x1: float, x2: float) -> float:
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def branin_best(search: str, seed: int, k: int, sampler: str = "tpe") -> list[float]:
    """The best Branin value after each of k trials of gentrain's search (its searcher alone)."""
    from ray import tune

    from gentrain import sweep_search
    from gentrain.spec_sweep import SweepSection

    space = {"x1": {"uniform": [-5, 10]}, "x2": {"uniform": [0, 15]}}
    section = SweepSection(
        search=search, sampler=sampler, trials=k, concurrency=k, seed=seed, space=space
    )
    searcher = sweep_search.make_search(section)
    values = []
    if search == "bayesian":
        searcher.set_search_properties("loss", "min", sweep_search.param_space(section))
        for trial in range(k):
            config = searcher.suggest(str(trial))
            values.append(branin(config["x1"], config["x2"]))
            searcher.on_trial_complete(str(trial), {"loss": values[-1]})
    else:
        with tempfile.TemporaryDirectory() as tmp:
            searcher.add_configurations(
                tune.Experiment(
                    "r",
                    _wait,
                    config=sweep_search.param_space(section),
                    num_samples=k,
                    storage_path=tmp,
                )
            )
            while (trial := searcher.next_trial()) is not None:
                values.append(branin(trial.config["x1"], trial.config["x2"]))
    return [min(values[: i + 1]) for i in range(k)]


def gpt_best(search: str, seed: int, k: int) -> float:
    from gentrain import sweep

    space = {
        "optim.lr": {"loguniform": [1e-4, 3e-2]},
        "model.overrides.dim": {"choice": [16, 32, 64]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        job = gpt_sweep(Path(tmp), {"search": search, "trials": k, "seed": seed, "space": space})
        return sweep.run(job).best_value


def asha_versus_none(seed: int, trials: int) -> dict[str, float]:
    """Best perplexity of an ASHA sweep, and of a sweep without a scheduler given the same
    total training steps (as many whole trials as fit)."""
    from gentrain import sweep

    space = {"optim.lr": {"loguniform": [1e-5, 3e-2]}}
    with tempfile.TemporaryDirectory() as tmp:
        asha = gpt_sweep(
            Path(tmp),
            {
                "search": "random",
                "trials": trials,
                "seed": seed,
                "scheduler": "asha",
                "space": space,
            },
        )
        result = sweep.run(asha)
        steps = sum(_last_step(run, result) for run in _children(result))
        budget = max(1, round(steps / asha.train.max_steps))
        plain = gpt_sweep(
            Path(tmp), {"search": "random", "trials": budget, "seed": seed, "space": space}
        )
        plain_best = sweep.run(plain).best_value
    return {"asha": result.best_value, "none": plain_best, "steps": steps, "none_trials": budget}


BUDGET_SPACE = {
    "optim.lr": {"loguniform": [1e-4, 3e-2]},
    "model.overrides.dim": {"choice": [16, 32, 64]},
    "optim.warmup_steps": {"int": [0, 30]},
}
BUDGET_GRID = {
    "optim.lr": {"grid": [1e-3, 1e-2]},
    "model.overrides.dim": {"grid": [16, 64]},
    "optim.warmup_steps": {"grid": [0, 20]},
}
BUDGET_TRIALS = 8  # whole trials' worth of steps every method gets
METHODS = {  # name -> the sweep section (the same budget for all)
    "random": {"search": "random"},
    "random_asha": {"search": "random", "scheduler": "asha"},
    "tpe": {"search": "bayesian"},
    "tpe_asha": {"search": "bayesian", "scheduler": "asha"},
    "grid": {"search": "grid"},
}


def equal_budget(method: str, seed: int) -> dict:
    """One sweep of `method` under the budget: its best perplexity, and the step (counted over
    all its trials, in the order they ran) of each new best it reported."""
    from gentrain import sweep

    section = METHODS[method]
    budget = BUDGET_TRIALS * 40  # steps: BUDGET_TRIALS trials of train.max_steps 40
    stopping = "scheduler" in section  # trials stop early: more of them fit the budget
    with tempfile.TemporaryDirectory() as tmp:
        job = gpt_sweep(
            Path(tmp),
            {
                **section,
                "seed": seed,
                "space": BUDGET_GRID if method == "grid" else BUDGET_SPACE,
                "trials": 8 * BUDGET_TRIALS if stopping else BUDGET_TRIALS,
                "budget_steps": budget,
            },
            optim={"schedule": "cosine"},
            evaluation={
                "metrics": ["perplexity"]
            },  # what the sweeps compare; text metrics cost 5 s
            max_steps=40,
            eval_every=10,
        )
        result = sweep.run(job)
        return {"best": result.best_value, "curve": _best_so_far(result)}


def _best_so_far(result) -> list[tuple[int, float]]:
    """(steps spent by the sweep, the best perplexity so far) at each evaluation, trials in the
    order they started."""
    import mlflow

    client = mlflow.MlflowClient(result.tracking_uri)
    runs = sorted(_children(result), key=lambda run: run.info.start_time)
    spent, best, curve = 0, math.inf, []
    for run in runs:
        for m in sorted(
            client.get_metric_history(run.info.run_id, "perplexity"), key=lambda m: m.step
        ):
            if m.value < best:
                best = m.value
                curve.append((spent + m.step, best))
        spent += _last_step(run, result)
    return curve


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    return next((steps for steps, best in curve if best <= target), math.inf)


def _last_step(run, result) -> int:
    import mlflow

    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(run.info.run_id, "loss")
    return max((m.step for m in history), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8, help="k: trials per GPT search")
    parser.add_argument("--quick", action="store_true", help="3 seeds, 4 trials")
    parser.add_argument("--json", type=Path, help="also write the figures here (flat JSON)")
    parser.add_argument(
        "--eval-metrics",
        type=lambda text: text.split(","),
        help="overhead: the trials' eval.metrics (default: the job's, text quality included)",
    )
    parser.add_argument("--workers", default="1,2", help="overhead: trials of these workers")
    parser.add_argument("--overhead-trials", type=int, default=5, help="overhead: trials each")
    parts = ("overhead", "branin", "gpt", "asha", "budget")
    parser.add_argument("--parts", default=",".join(parts), help=f"some of {','.join(parts)}")
    args = parser.parse_args()
    wanted = set(args.parts.split(","))
    if args.quick:
        args.seeds, args.trials = 3, 4
    figures: dict[str, float] = {}

    if "overhead" in wanted:
        print("== trial overhead: each trial's wall time beyond its training, timed in the trial")
        chosen = {int(w) for w in args.workers.split(",")}
        for workers in sorted(chosen):
            ours = trial_overhead(workers, args.overhead_trials, args.eval_metrics)
            seconds = statistics.median(trial["training"] for trial in ours)
            gentrain = statistics.median(trial["wall"] - trial["training"] for trial in ours)
            bare = statistics.median(bare_tune_overhead(workers, args.overhead_trials, seconds))
            figures[f"overhead.workers_{workers}"] = gentrain
            figures[f"overhead.bare_tune.workers_{workers}"] = bare
            figures[f"overhead.added.workers_{workers}"] = gentrain - bare
            print(
                f"{workers} worker(s): gentrain {gentrain:.2f} s per trial, bare Ray Tune"
                f"{' + Ray Train (DDP)' if workers > 1 else ''} {bare:.2f} s: gentrain adds"
                f" {gentrain - bare:.2f} s ({'target <= 2 s; ' if workers > 1 else ''}"
                f"training {seconds:.2f} s per trial,"
                f" medians of {args.overhead_trials} trials; per trial"
                f" {[round(t['wall'] - t['training'], 2) for t in ours]})"
            )

    if "branin" in wanted:
        print("== Branin (global minimum 0.397887): best after k trials, median of 5 seeds")
        ks = (5, 10, 20)
        for label, search, sampler in (
            ("random", "random", "tpe"),
            ("bayesian tpe", "bayesian", "tpe"),
            ("bayesian gp", "bayesian", "gp"),
        ):
            runs = [branin_best(search, seed, max(ks), sampler) for seed in range(5)]
            medians = [statistics.median(run[k - 1] for run in runs) for k in ks]
            for k, value in zip(ks, medians, strict=True):
                figures[f"branin.{label.replace(' ', '_')}.k{k}"] = value
            print(
                f"{label:<14}"
                + "  ".join(f"k={k}: {v:.4f}" for k, v in zip(ks, medians, strict=True))
            )

    if "gpt" in wanted:
        print(
            f"== tiny GPT perplexity: best after {args.trials} trials, median of {args.seeds} seeds"
        )
        for search in ("random", "bayesian"):
            best = statistics.median(
                gpt_best(search, seed, args.trials) for seed in range(args.seeds)
            )
            figures[f"gpt.{search}"] = best
            print(f"{search:<10}{best:.3f}")

    if "asha" in wanted:
        print("== ASHA versus no scheduler at equal total training steps (tiny GPT perplexity)")
        rounds = [
            asha_versus_none(seed, 2 * args.trials) for seed in range(max(1, args.seeds // 2))
        ]
        for name in ("asha", "none"):
            figures[f"scheduler.{name}"] = statistics.median(r[name] for r in rounds)
        print(
            f"ASHA {figures['scheduler.asha']:.3f}  none {figures['scheduler.none']:.3f}  "
            f"(steps per round {[r['steps'] for r in rounds]}, "
            f"trials without a scheduler {[r['none_trials'] for r in rounds]})"
        )
    if "budget" in wanted:
        print(
            f"== equal budget ({BUDGET_TRIALS} trials x 40 steps each method), tiny GPT "
            f"perplexity, median of {args.seeds} seeds"
        )
        runs = {m: [equal_budget(m, seed) for seed in range(args.seeds)] for m in METHODS}
        targets = [run["best"] for run in runs["random"]]  # random's final best, each seed
        best = {m: statistics.median(r["best"] for r in rs) for m, rs in runs.items()}
        reach = {
            m: statistics.median(
                steps_to_reach(r["curve"], target) for r, target in zip(rs, targets, strict=True)
            )
            for m, rs in runs.items()
        }
        for m in METHODS:
            figures[f"budget.{m}.best"], figures[f"budget.{m}.steps_to_random_best"] = (
                best[m],
                reach[m],
            )
            print(
                f"{m:<12} best {best[m]:8.3f}   steps to reach random's best {reach[m]:6.0f}"
                f"   per seed {[round(r['best'], 2) for r in runs[m]]}"
            )
        figures["asha_steps_ratio"] = reach["random_asha"] / reach["random"]
        figures["asha_best_ratio"] = best["random_asha"] / best["random"]
        figures["tpe_asha_best_ratio"] = best["tpe_asha"] / best["random"]
        print(
            f"asha_steps_ratio {figures['asha_steps_ratio']:.3f} (target <= 0.5)  "
            f"asha_best_ratio {figures['asha_best_ratio']:.3f} (target <= 1)  "
            f"tpe_asha_best_ratio {figures['tpe_asha_best_ratio']:.3f} (target: the lowest)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
