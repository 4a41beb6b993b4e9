"""Every family's shipped job on the GPU under each mixed precision: one worker (NCCL, autocast,
GradScaler for fp16), a short run through `launch.run`, its loss at the start and the end and its
final metrics. Skips with a line where no CUDA device is visible.

    python bench/gpu_families.py [--families gan,gpt] [--precisions bf16,fp16] [--steps 300]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_one(path: Path, precision: str, steps: int, workdir: Path) -> dict:
    import mlflow

    from gentrain import launch, spec

    job = spec.load(
        path,
        [
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            f"storage.path={workdir}/ckpt",
            "train.use_gpu=true",
            f"train.precision={precision}",
            "train.workers=1",
            f"train.max_steps={steps}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            "train.log_every=10",
        ],
    )
    start = time.perf_counter()
    result = launch.run(job)
    seconds = time.perf_counter() - start
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    return {"losses": losses, "seconds": seconds, "metrics": result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated; default: every family with a job")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_families: no CUDA device here; skipped")
        return
    from gentrain import spec

    jobs = {spec.load(p).model.family: p for p in sorted((REPO / "jobs").glob("*.yaml"))}
    wanted = args.families.split(",") if args.families else sorted(jobs)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'family':<10}{'precision':<10}{'loss first':>11}{'loss last':>11}{'sec':>7}  metrics")
    for family in wanted:
        for precision in args.precisions.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    out = run_one(jobs[family], precision, args.steps, Path(tmp))
                except Exception as err:  # a table row, not a stop: the other cells still run
                    print(f"{family:<10}{precision:<10} FAILED: {str(err)[:300]}")
                    continue
            losses, shown = (
                out["losses"],
                {k: round(v, 3) for k, v in out["metrics"].items() if k not in ("step", "loss")},
            )
            print(
                f"{family:<10}{precision:<10}{losses[0]:>11.4f}{losses[-1]:>11.4f}"
                f"{out['seconds']:>7.0f}  {shown}",
                flush=True,
            )


if __name__ == "__main__":
    main()
