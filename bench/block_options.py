"""What train.activation_checkpointing saves and what train.compile gives or costs: GPT `small`
(and the diffusion UNet) trained by gentrain's own ddp strategy on one rank in this process.

    python bench/block_options.py [--families gpt,diffusion] [--batch 16] [--steps 10]

Activation memory is the bytes autograd keeps between a step's forward and its backward: every
tensor saved for the backward, counted once per storage, through saved-tensor hooks around the
family's loss. Under activation checkpointing a block keeps only its inputs; its own saved
tensors are made again in the backward (torch's checkpoint takes them under hooks of its own,
so the outer hooks see only what is kept). Speed is the median seconds of a training step after
two warm-up steps; the first forward and backward, which compiles, is reported on its own.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
JOBS = {"gpt": "gpt_python_docs.yaml", "diffusion": "diffusion_digits.yaml"}
FLAVOR = {"gpt": "small", "diffusion": "small"}


class KeptForBackward:
    """Bytes of the tensors autograd saves for the backward, each storage once."""

    def __init__(self):
        self.storages: set[int] = set()
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.storages:
            self.storages.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor


def measure(family: str, options: list[str], *, batch: int, steps: int) -> dict[str, float]:
    from gentrain import noise
    from gentrain import spec as spec_module
    from gentrain.data import open_data
    from gentrain.families import get_family
    from gentrain.noise import DrawPlan
    from gentrain.strategies import make_strategy

    spec = spec_module.load(
        REPO / "jobs" / JOBS[family],
        [f"model.flavor={FLAVOR[family]}", f"data.batch_size={batch}", "train.workers=1", *options],
    )
    family_spec = get_family(spec.model.family)
    step_fn = family_spec.make_step()
    data = open_data(spec.data)
    torch.manual_seed(0)
    models = step_fn.build(family_spec.config(flavor=FLAVOR[family], overrides={}), data.info)
    strategy = make_strategy(spec, device=torch.device("cpu"), world=1, rank=0)
    strategy.prepare(models, step_fn)
    phase = step_fn.phases[-1]
    batches = data.stream.batches(batch_size=batch, rank=0, world=1)
    first = next(batches)[0]
    kept = KeptForBackward()
    start = time.perf_counter()  # the first forward and backward (compiled ones compile here)
    with noise.planned(DrawPlan(0, 1, phase, 0, batch)), strategy.phase(phase) as wrapped:
        with torch.autograd.graph.saved_tensors_hooks(kept.pack, lambda t: t):
            loss, _ = step_fn.loss(wrapped, first, phase=phase)
    loss.backward()
    seconds = [time.perf_counter() - start]
    for step in range(2, steps + 3):
        part = next(batches)[0]
        plan = DrawPlan(0, step, phase, 0, batch)
        start = time.perf_counter()
        strategy.train_phase(phase, part, lambda offset, plan=plan: plan)
        seconds.append(time.perf_counter() - start)
    batches.close()
    return {
        "activation_mb": kept.bytes / 2**20,
        "first_step_s": seconds[0],
        "step_s": statistics.median(seconds[2:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="gpt,diffusion")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = {
        "plain": [],
        "activation checkpointing": ["train.activation_checkpointing=true"],
        "compile": ["train.compile=true"],
    }
    print(f"one rank, CPU ({torch.get_num_threads()} threads), batch {args.batch}")
    print(f"{'family':<10}{'options':<26}{'kept MB':>9}{'1st step s':>11}{'step s':>9}")
    for family in args.families.split(","):
        base = None
        for name, options in rows.items():
            row = measure(family, options, batch=args.batch, steps=args.steps)
            base = base or row
            print(
                f"{family:<10}{name:<26}{row['activation_mb']:>9.1f}{row['first_step_s']:>11.2f}"
                f"{row['step_s']:>9.3f}  ({row['activation_mb'] / base['activation_mb']:.2f}x "
                f"memory, {row['step_s'] / base['step_s']:.2f}x time of plain)",
                flush=True,
            )


if __name__ == "__main__":
    main()
