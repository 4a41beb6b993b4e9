"""Every family's shipped job on the GPU under each strategy and mixed precision: one worker (NCCL,
autocast, GradScaler for fp16; FSDP2 with bf16 parameters and fp32 reduction; DeepSpeed's
bf16/fp16 modes and fused optimizers), a short run
through `launch.run`, its loss at the start and the end and its final metrics. Skips with a line
where no CUDA device is visible.

    python bench/gpu_families.py [--families gan,gpt] [--strategies ddp,zero3]
        [--precisions bf16,fp16] [--steps 300] [--quick] [--json PATH]
    python bench/gpu_families.py --strategies fsdp --precisions fp32,bf16   # FSDP2 on the GPU
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


STRATEGIES = {
    "ddp": [],
    "fsdp": ["train.strategy=fsdp"],  # bf16: FSDP's MixedPrecisionPolicy; fp16 is refused
    **{
        f"zero{stage}": ["train.strategy=deepspeed", f"train.deepspeed.zero_stage={stage}"]
        for stage in range(4)
    },
}


def run_one(path: Path, strategy: str, precision: str, steps: int, workdir: Path) -> dict:
    import mlflow

    from gentrain import launch, spec

    job = spec.load(
        path,
        [
            *STRATEGIES[strategy],
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
    parser.add_argument("--strategies", default="ddp", help=f"of {', '.join(STRATEGIES)}")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="30 steps")
    parser.add_argument("--json", type=Path, help="write the figures as flat JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_families: no CUDA device here; skipped")
        return
    from gentrain import spec

    jobs = {spec.load(p).model.family: p for p in sorted((REPO / "jobs").glob("*.yaml"))}
    wanted = args.families.split(",") if args.families else sorted(jobs)
    steps = 30 if args.quick else args.steps
    figures: dict[str, float] = {}
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(
        f"{'family':<10}{'strategy':<9}{'precision':<10}{'loss first':>11}{'loss last':>11}"
        f"{'sec':>7}  metrics"
    )
    for family in wanted:
        for strategy in args.strategies.split(","):
            for precision in args.precisions.split(","):
                cell = f"{family:<10}{strategy:<9}{precision:<10}"
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        out = run_one(jobs[family], strategy, precision, steps, Path(tmp))
                    except Exception as err:  # a table row, not a stop: the other cells run
                        print(f"{cell} FAILED: {str(err)[:300]}", flush=True)
                        continue
                losses = out["losses"]
                shown = {
                    k: round(v, 3) for k, v in out["metrics"].items() if k not in ("step", "loss")
                }
                key = f"{family}.{strategy}.{precision}"
                figures.update({f"{key}.loss_first": losses[0], f"{key}.loss_last": losses[-1]})
                print(
                    f"{cell}{losses[0]:>11.4f}{losses[-1]:>11.4f}{out['seconds']:>7.0f}  {shown}",
                    flush=True,
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
