"""How close `gentrain plan` comes to what runs hold: for each shipped job and each layout the plan
sizes at 1 and 2 workers, the plan's per-worker model state and peak against a real run's, and
how long the plan takes for each shipped job.

    python bench/plan_accuracy.py [--quick] [--jobs gpt_python_docs,dcgan_digits] [--json PATH]

Each layout runs gentrain's own strategy (prepare, then two training steps of every phase, as
the trainer runs them) in gloo processes of its own. Measured per rank:
  model state  the tensors held inside the second step's last optimizer step (weights, their
               gradients, the optimizer's state and DeepSpeed's fp32 partitions; each storage
               once; see bench/zero_memory.py)
  peak         the process's peak resident memory (VmHWM: ru_maxrss would carry the peak of
               the process it was spawned from)
The fullest rank's figures are compared: ratio = estimate / measured - 1. The plan's time is
`gentrain plan JOB --json` in a fresh process, as a person waits for it.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook

from zero_memory import free_port, measure_all

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.yaml"))
QUICK = ["gpt_python_docs", "dcgan_digits"]
STEPS = 2


def held(strategy) -> dict[str, int]:
    """Bytes of the weights, gradients and optimizer state this rank's strategy holds."""
    engines = getattr(strategy, "engines", {})
    plain = getattr(strategy, "raw", None) or getattr(strategy, "models", {})  # ddp, fsdp; pipeline
    modules = [e.module for e in engines.values()] or list(plain.values())
    zeros = [e.optimizer for e in engines.values()]
    optimizers = [getattr(z, "optimizer", z) for z in zeros]
    optimizers += list(getattr(strategy, "optimizers", {}).values())
    return measure_all(modules, zeros, optimizers)


def worker(rank: int, world: int, port: int, job: str, settings: dict, results) -> None:
    from gentrain import rng
    from gentrain import spec as spec_module
    from gentrain.data import open_data
    from gentrain.families import get_family
    from gentrain.noise import DrawPlan
    from gentrain.strategies import make_strategy

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    base = spec_module.load(REPO / "jobs" / f"{job}.yaml")
    spec = spec_module.trial_spec(base.to_dict(), settings)
    family = get_family(spec.model.family)
    step_fn = family.make_step()
    data = open_data(spec.data, seed=spec.train.seed)
    rng.seed_everything(spec.train.seed)
    config = family.config(flavor=spec.model.flavor, overrides=spec.model.overrides)
    models = step_fn.build(config, data.info)
    strategy = make_strategy(spec, device=torch.device("cpu"), world=world, rank=rank)
    strategy.prepare(models, step_fn)
    seen: list[dict[str, int]] = []
    step = 0

    def at_step(optimizer, args, kwargs) -> None:
        if step == STEPS:
            seen.append(held(strategy))

    hook = register_optimizer_step_pre_hook(at_step)
    batches = data.stream.batches(
        batch_size=spec.data.batch_size, rank=strategy.data_rank, world=strategy.data_world
    )
    for step in range(1, STEPS + 1):
        batch = next(batches)[0]
        for phase in step_fn.phases:

            def plan(offset: int, step: int = step, phase: str = phase) -> DrawPlan:
                rows = batches.first_row + offset
                return DrawPlan(spec.train.seed, step, phase, rows, spec.data.batch_size)

            strategy.train_phase(phase, batch, plan)
    batches.close()
    hook.remove()
    state = max(seen, key=lambda h: sum(h.values())) if seen else held(strategy)
    peak = peak_resident()
    results.put((rank, sum(state.values()), peak))
    dist.barrier()
    dist.destroy_process_group()


def peak_resident() -> int:
    """This process's own high-water mark of resident memory, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(job: str, settings: dict, world: int) -> tuple[int, int]:
    """The fullest rank's model state and peak resident bytes."""
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        worker,
        args=(world, free_port(), job, settings, results),
        nprocs=world,
        start_method="spawn",
    )
    per_rank = [results.get() for _ in range(world)]
    return max(r[1] for r in per_rank), max(r[2] for r in per_rank)


def plan_rows(job: str) -> tuple[float, list[dict]]:
    """`gentrain plan JOB --workers 1,2 --json` as a person runs it: its seconds and rows."""
    started = time.perf_counter()
    spec = str(REPO / "jobs" / f"{job}.yaml")
    command = [sys.executable, "-m", "gentrain.cli", "plan", spec, "--workers", "1,2", "--json"]
    shown = subprocess.run(command, capture_output=True, text=True)
    if shown.returncode:
        raise SystemExit(shown.stderr)
    return time.perf_counter() - started, json.loads(shown.stdout)


def main() -> None:
    from gentrain import spec as spec_module
    from gentrain.plan import Layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--jobs", help="comma-separated shipped jobs (default: all)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    jobs = args.jobs.split(",") if args.jobs else QUICK if args.quick else JOBS

    rows, seconds = [], {}
    print(
        f"{'job':<22}{'layout':<16}{'N':>3}{'state est':>12}{'measured':>12}{'ratio':>8}"
        f"{'peak est':>12}{'measured':>12}{'ratio':>8}"
    )
    for job in jobs:
        seconds[job], planned = plan_rows(job)
        spec = spec_module.load(REPO / "jobs" / f"{job}.yaml")
        for row in planned:
            keys = ("zero_stage", "offload", "stages", "microbatches")
            layout = Layout(row["strategy"], row["workers"], **{k: row[k] for k in keys})
            state, peak = measure(job, layout.settings(spec), row["workers"])
            estimated = row["params_bytes"] + row["grads_bytes"] + row["optimizer_bytes"]
            figures = {
                "job": job,
                "layout": row["name"],
                "workers": row["workers"],
                "state_estimate": estimated,
                "state_measured": state,
                "state_ratio": estimated / state - 1,
                "peak_estimate": row["total_bytes"],
                "peak_measured": peak,
                "peak_ratio": row["total_bytes"] / peak - 1,
            }
            rows.append(figures)
            print(
                f"{job:<22}{row['name']:<16}{row['workers']:>3}{estimated / 2**20:>11.2f}M"
                f"{state / 2**20:>11.2f}M{figures['state_ratio']:>+8.3f}"
                f"{row['total_bytes'] / 2**20:>11.1f}M{peak / 2**20:>11.1f}M"
                f"{figures['peak_ratio']:>+8.3f}",
                flush=True,
            )
    worst_state = max(abs(r["state_ratio"]) for r in rows)
    worst_peak = max(abs(r["peak_ratio"]) for r in rows)
    print(
        f"worst |estimate/measured - 1|: model state {worst_state:.3f} (target <= 0.05), "
        f"peak {worst_peak:.3f} (target <= 0.25)"
    )
    slowest = max(seconds, key=seconds.get)
    print("plan time: " + ", ".join(f"{job} {s:.1f} s" for job, s in seconds.items()))
    print(f"slowest plan: {slowest} {seconds[slowest]:.1f} s (target <= 15 s)")
    figures = {
        "ratio_model_state_worst": worst_state,
        "ratio_peak_worst": worst_peak,
        "plan_seconds_worst": seconds[slowest],
        "plan_seconds": seconds,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
