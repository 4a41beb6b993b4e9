"""gentrain's training loop versus a bare PyTorch loop: DCGAN `small` on digits, one worker, same
data, seed, batch and threads. Prints both samples/s and their ratio (target >= 0.95), and
gentrain's with MLflow's system metrics (sampled at the default interval) against without
(target >= 0.97), and with the run's heartbeat and stall watchdog as shipped against without
(target >= 0.97; also with the heartbeat 30 times as often).

    python bench/overhead.py [--steps N] [--quick] [--json PATH]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
LOG_EVERY = 50


def bare_loop(
    *, steps: int, batch_size: int, lr: float, betas: tuple[float, float], threads: int, seed: int
) -> float:
    """Samples/s of a plain loop over the same networks, after the same LOG_EVERY warm-up steps."""
    from gentrain.data.digits import load_digits
    from gentrain.families.gan.config import GANConfig
    from gentrain.families.gan.model import Discriminator, Generator

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, _ = load_digits("train")
    config = GANConfig(latent_dim=32, g_channels=64, d_channels=64, spectral_norm=True)
    d, g = Discriminator(config, (1, 8, 8)), Generator(config, (1, 8, 8))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
    order = torch.randperm(len(images))
    per_epoch = len(images) // batch_size
    start = 0.0
    for step in range(steps):
        if step == LOG_EVERY:
            start = time.perf_counter()
        index = step % per_epoch
        if index == 0:
            order = torch.randperm(len(images))
        real = images[order[index * batch_size : (index + 1) * batch_size]]
        with torch.no_grad():
            fake = g(torch.randn(batch_size, config.latent_dim))
        real_logits, fake_logits = d(torch.cat([real, fake])).chunk(2)
        loss_d = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = F.softplus(-d(g(torch.randn(batch_size, config.latent_dim)))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_d.item(), loss_g.item()  # a real loop reads its losses too
    return batch_size * (steps - LOG_EVERY) / (time.perf_counter() - start)


def gentrain_loop(
    *,
    steps: int,
    batch_size: int,
    threads: int,
    workdir: Path,
    system_metrics: bool = True,
    liveness: str = "default",
) -> tuple[float, dict]:
    """Samples/s of gentrain's whole loop (logging, metric reduction and all) between its first
    and last loss reports, from the MLflow metric timestamps; start-up and final evaluation
    excluded. `liveness`: the run's heartbeat and stall watchdog as shipped ("default"), both
    off ("off"), or the heartbeat 30 times as often as shipped ("every_1s")."""
    import mlflow

    from gentrain import launch, spec

    os.environ["GENTRAIN_HEARTBEAT_S"] = {"default": "", "off": "0", "every_1s": "1"}[liveness]
    job = spec.load(
        REPO / "jobs" / "dcgan_digits.yaml",
        [
            "train.workers=1",
            f"train.cpus_per_worker={threads}",
            f"train.max_steps={steps}",
            f"train.log_every={LOG_EVERY}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            f"data.batch_size={batch_size}",
            "eval.num_samples=100",
            "name=bench-overhead",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            f"storage.path={workdir / 'ckpt'}",
            f"tracking.system_metrics={system_metrics}",
            f"train.stall_timeout={'off' if liveness == 'off' else 'auto'}",
        ],
    )
    result = launch.run(job)
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "loss")
    first, last = min(history, key=lambda m: m.step), max(history, key=lambda m: m.step)
    seconds = (last.timestamp - first.timestamp) / 1000
    return batch_size * (last.step - first.step) / seconds, job.optim


def beat_seconds(calls: int = 200_000) -> float:
    """What rank 0's training thread spends on each step's beat (the watchdog's progress), in
    seconds a call: the rest of the liveness work runs in threads and processes of its own."""
    from types import SimpleNamespace

    from gentrain.stall import Beat
    from gentrain.trainer import RayTrainSession

    session = SimpleNamespace(latest=Beat(pid=1, step=0, count=0, slowest_step=0.0))
    start = time.perf_counter()
    for step in range(calls):
        RayTrainSession.beat(session, step, 0.1)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="a reduced size for smoke tests")
    parser.add_argument("--json", type=Path, help="write the figures as flat JSON")
    args = parser.parse_args()
    steps = 150 if args.quick else args.steps
    threads, batch_size = 2, 64

    variants = {  # name: (system metrics, liveness)
        "ours": (True, "default"),
        "unmonitored": (False, "default"),
        "unwatched": (False, "off"),
        "beating": (False, "every_1s"),
    }
    rates = {}
    for name, (system_metrics, liveness) in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            rates[name], optim = gentrain_loop(
                steps=steps,
                batch_size=batch_size,
                threads=threads,
                workdir=Path(tmp),
                system_metrics=system_metrics,
                liveness=liveness,
            )
    ours, unmonitored = rates["ours"], rates["unmonitored"]
    unwatched, beating = rates["unwatched"], rates["beating"]
    bare = bare_loop(
        steps=steps, batch_size=batch_size, lr=optim.lr, betas=optim.betas, threads=threads, seed=0
    )
    ratio = ours / bare
    print(f"DCGAN small on digits, 1 worker, {threads} threads, batch {batch_size}, {steps} steps")
    print(f"{'loop':<12}{'samples/s':>12}")
    print(f"{'bare torch':<12}{bare:>12.1f}")
    print(f"{'gentrain':<12}{ours:>12.1f}")
    print(f"{'no sys. m.':<12}{unmonitored:>12.1f}")
    print(f"{'no liveness':<12}{unwatched:>12.1f}  (no heartbeat, no stall watchdog, no sys. m.)")
    print(f"{'beat 1/s':<12}{beating:>12.1f}  (heartbeat every 1 s: 30x shipped; no sys. m.)")
    print(f"ratio gentrain / bare: {ratio:.3f}  (target >= 0.95)")
    monitored = ours / unmonitored
    print(f"ratio with / without system metrics: {monitored:.3f}  (target >= 0.97)")
    liveness = unmonitored / unwatched
    print(f"ratio heartbeat + watchdog as shipped / none: {liveness:.3f}  (target >= 0.97)")
    print(f"ratio heartbeat every 1 s / none: {beating / unwatched:.3f}")
    beat = beat_seconds()
    step_seconds = batch_size / unwatched
    print(f"a step's beat: {beat * 1e6:.2f} us = {beat / step_seconds:.5%} of a step")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {
            "ratio": ratio,
            "gentrain_samples_per_sec": ours,
            "bare_samples_per_sec": bare,
            "system_metrics_ratio": monitored,
            "unmonitored_samples_per_sec": unmonitored,
            "liveness_ratio": liveness,
            "heartbeat_1s_ratio": beating / unwatched,
            "beat_seconds_per_step": beat,
            "unwatched_samples_per_sec": unwatched,
            "steps": steps,
            "threads": threads,
            "batch_size": batch_size,
        }
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    sys.exit(main())
