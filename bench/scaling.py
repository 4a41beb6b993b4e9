"""Throughput scaling on this machine, through `gentrain run`'s own path (embedded Ray, Ray Train
workers, one thread each): DDP with 1 and 2 workers on the same GPT (target ratio >= 1.8 on 2
cores), and a 2-stage pipeline versus 1 worker with the same global batch.

    python bench/scaling.py [--steps N] [--layers L] [--quick] [--json PATH]

DDP keeps each worker's batch (2 workers train twice the global batch per step); the pipeline
trains the same global batch as the one worker, cut into micro-batches that flow through both
stages. Samples/s is gentrain's own `samples_per_sec` metric (training time only: evaluation and
checkpoints excluded), the median over the logging windows after the first (warm-up). This
machine's speed drifts by 10-20 % over minutes, so the runs go in rounds (1 worker, 2 workers,
pipeline, one after the other; every other round in reverse order, so that a steady drift favours
neither side of a ratio) and each ratio is the median of the rounds' own ratios.

Each round also trains DDP's two runs with the same training loop (gentrain.trainer) in plain
processes joined by gloo, without Ray: the gap between the two ratios is what Ray's own
processes (its daemons, Ray Train's controller and actors) take from the workers' 2 cores.
And it trains two 1-process runs side by side, apart: what the machine gives this model from 2
cores with no communication at all (shared caches and memory bandwidth), DDP's own ceiling.
"""

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
LOG_EVERY = 10


def _job(workdir: Path, *, steps: int, settings: list[str]):
    from gentrain import spec

    return spec.load(
        REPO / "jobs" / "gpt_python_docs.yaml",
        [
            "train.cpus_per_worker=1",
            f"train.max_steps={steps}",
            f"train.log_every={LOG_EVERY}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            "optim.warmup_steps=0",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            f"storage.path={workdir / 'checkpoints'}",
            *settings,
        ],
    )


def _median_rate(uri: str, run_id: str) -> float:
    import mlflow

    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "samples_per_sec")
    return statistics.median(m.value for m in sorted(history, key=lambda m: m.step)[1:])


def samples_per_sec(workdir: Path, *, steps: int, settings: list[str]) -> float:
    from gentrain import launch

    result = launch.run(_job(workdir, steps=steps, settings=settings))
    return _median_rate(result.tracking_uri, result.run_id)


def _plain_worker(rank: int, world: int, config: dict, port: int) -> None:
    from gentrain import trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer.train(config, trainer.PlainSession(rank, world))
    finally:
        dist.destroy_process_group()


def samples_per_sec_without_ray(workdir: Path, *, steps: int, settings: list[str]) -> float:
    """gentrain's same training loop in plain processes (torch.multiprocessing, one gloo process
    group), without Ray: the gap to `samples_per_sec` is what Ray's processes and calls cost."""
    from gentrain import tracking

    job = _job(workdir, steps=steps, settings=settings)
    uri = tracking.resolve_tracking_uri(job)
    run_id = tracking.start_run(job, uri=uri)
    config = {
        "spec": job.to_dict(),
        "run_id": run_id,
        "tracking_uri": uri,
        "outbox": str(workdir / "outbox"),
        "progress": None,
        "threads": 1,
    }
    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_plain_worker, args=(job.train.workers, config, port), nprocs=job.train.workers)
    tracking.end_run(run_id, uri=uri, status="FINISHED")
    return _median_rate(uri, run_id)


def _rate_without_ray_into(rates, workdir: Path, steps: int, settings: list[str]) -> None:
    workdir.mkdir()
    rates.put(samples_per_sec_without_ray(workdir, steps=steps, settings=settings))


def samples_per_sec_side_by_side(workdir: Path, *, steps: int, settings: list[str]) -> float:
    """Two runs of one process each at the same time, sharing nothing but the machine: what its
    2 cores give this model with no communication at all, the most DDP could reach here."""
    context = multiprocessing.get_context("spawn")
    rates = context.Queue()
    runs = [
        context.Process(
            target=_rate_without_ray_into, args=(rates, workdir / f"run{i}", steps, settings)
        )
        for i in range(2)
    ]
    for run in runs:
        run.start()
    total = sum(rates.get() for _ in runs)
    for run in runs:
        run.join()
    return total


def _matmuls_per_sec(seconds: float) -> float:
    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return done / seconds


def hardware_ceiling(seconds: float = 8.0) -> float:
    """What 2 cores give at best: 2 independent single-thread processes over 1 (shared caches
    and memory bandwidth keep it under 2)."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_matmuls_per_sec, [1.0, 1.0])  # both import torch before anything is timed
        alone = pool.apply(_matmuls_per_sec, (seconds,))
        together = sum(pool.map(_matmuls_per_sec, [seconds, seconds]))
    return together / alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--layers", type=int, default=8, help="GPT blocks (small: 4)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per worker (DDP)")
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="each run once per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 30 steps of 4 blocks")
    parser.add_argument("--json", type=Path, help="also write the figures here (flat JSON)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.layers, args.rounds = 30, 4, 1

    model = [f"model.overrides={{layers: {args.layers}}}"]
    one = ["train.workers=1", f"data.batch_size={args.batch}"]
    two = ["train.workers=2", f"data.batch_size={2 * args.batch}"]
    pipeline = [
        "train.workers=2",
        "train.strategy=pipeline",
        "train.pipeline.stages=2",
        f"train.pipeline.microbatches={args.microbatches}",
        f"data.batch_size={args.batch}",
    ]
    runs = {
        "ddp, 1 worker": (samples_per_sec, one),
        "ddp, 2 workers": (samples_per_sec, two),
        "pipeline, 2 stages": (samples_per_sec, pipeline),
        "no Ray, 1 process": (samples_per_sec_without_ray, one),
        "no Ray, 2 processes": (samples_per_sec_without_ray, two),
        "no Ray, 2 x 1 apart": (samples_per_sec_side_by_side, one),
    }
    ceiling = hardware_ceiling()
    rounds = []
    for number in range(args.rounds):
        rates = {}
        order = list(runs) if number % 2 == 0 else list(reversed(runs))
        for name in order:
            measure, settings = runs[name]
            with tempfile.TemporaryDirectory() as tmp:
                rates[name] = measure(Path(tmp), steps=args.steps, settings=model + settings)
        rounds.append(rates)

    compared = {  # JSON key: (over, under)
        "ratio": ("ddp, 2 workers", "ddp, 1 worker"),
        "ratio_without_ray": ("no Ray, 2 processes", "no Ray, 1 process"),
        "ratio_side_by_side": ("no Ray, 2 x 1 apart", "no Ray, 1 process"),
        "pipeline_ratio": ("pipeline, 2 stages", "ddp, 1 worker"),
    }
    by_round = {key: [r[a] / r[b] for r in rounds] for key, (a, b) in compared.items()}
    ratio = {key: statistics.median(values) for key, values in by_round.items()}

    def told(key: str) -> str:
        """The median, then each round's ratio."""
        return f"{ratio[key]:.2f} ({', '.join(f'{value:.2f}' for value in by_round[key])})"

    print(f"GPT small with {args.layers} blocks, seq 128, 1 thread per worker, {args.steps} steps")
    print(f"{'run':<22}samples/s, round by round")
    for name in runs:
        print(f"{name:<22}" + "".join(f"{r[name]:>8.1f}" for r in rounds))
    rounds_told = f"median of {args.rounds} rounds"
    print(f"DDP 2 workers / 1 worker: {told('ratio')}, {rounds_told} (target >= 1.8)")
    print(f"  the same loop without Ray, 2 processes / 1: {told('ratio_without_ray')}")
    print(f"  two 1-process runs side by side, no communication / 1: {told('ratio_side_by_side')}")
    print(f"  this machine's ceiling, 2 independent 1-thread matmul loops / 1: {ceiling:.2f}")
    print(
        f"pipeline 2 stages / 1 worker: {told('pipeline_ratio')}  "
        f"({args.microbatches} micro-batches)"
    )
    if args.json:
        figures = {
            **ratio,
            "hardware_ceiling": ceiling,
            **{
                f"samples_per_sec.{name}": statistics.median(r[name] for r in rounds)
                for name in runs
            },
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
