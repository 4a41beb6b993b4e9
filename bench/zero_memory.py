"""Per-rank model state (parameters + gradients + optimizer state) of GPT `small` under ddp, fsdp
and DeepSpeed ZeRO 1/2/3 on 2 gloo workers, measured from the tensors each rank holds when its
optimizer steps, next to the ZeRO paper's formulas adapted to the precision trained.

    python bench/zero_memory.py [--workers N] [--flavor small] [--quick] [--json PATH]

Each rank runs gentrain's own strategy (prepare + train_phase) in a process of its own, two steps,
and is measured inside its second optimizer step (Adam's moments exist, gradients are still held).
Tensors are counted once per storage:
  params     the module's parameters (ZeRO-3: the rank's partition, `ds_tensor`; fsdp: each
             DTensor's local shard)
  grads      the parameters' .grad, and the gradients of DeepSpeed's fp32 partitions
  optimizer  DeepSpeed's fp32 master partitions and the optimizer's moments (Adam: m and v)

Formulas (Ψ parameters, N ranks). The paper's mixed precision keeps fp16 params and grads (2+2)
and K = 12 bytes of fp32 state (master, m, v). This machine trains fp32, so params and grads take
4 bytes each; DDP's fp32 params are their own master (K = 8, m and v), and so are fsdp's (all
of it sharded: (4 + 4 + 8) / N) and ZeRO-3's
(gentrain shares them, as DeepSpeed means to), while ZeRO-1/2 keep a separate fp32 master
partition (K = 12). bf16 rows (DeepSpeed's own bf16 mode, which a spec turns
on with `train.deepspeed.config: {bf16: {enabled: true}}`) take 2 bytes for params and grads.
"""

import argparse
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gentrain.spec import flatten

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = ["train.strategy=deepspeed"]
BF16 = ["train.deepspeed.config={bf16: {enabled: true}}"]
RUNS = {  # name: (spec overrides, zero stage or None for DDP, bytes per param and per grad)
    "ddp": ([], None, 4),
    "fsdp": (["train.strategy=fsdp"], "fsdp", 4),
    "zero1": (DEEPSPEED + ["train.deepspeed.zero_stage=1"], 1, 4),
    "zero2": (DEEPSPEED + ["train.deepspeed.zero_stage=2"], 2, 4),
    "zero3": (DEEPSPEED + ["train.deepspeed.zero_stage=3"], 3, 4),
    "zero3 bf16": (DEEPSPEED + ["train.deepspeed.zero_stage=3", *BF16], 3, 2),
}


def formula(stage: int | str | None, *, width: int, world: int) -> float:
    """Bytes per parameter per rank (ZeRO paper, Table 1), with `width` bytes for params/grads."""
    if stage is None:
        return 4 + 4 + 8  # fp32 DDP: params, grads, m and v
    if stage == "fsdp":
        return (4 + 4 + 8) / world  # every part sharded, fp32 weights their own master
    k = 12  # an fp32 master partition, m and v
    if stage == 1:
        return width + width + k / world
    if stage == 2:
        return width + (width + k) / world
    own_master = width == 4  # fp32 weights are their own master: m and v only
    return (width + width + (8 if own_master else k)) / world


class Holdings:
    """Bytes per kind, each storage counted once."""

    def __init__(self):
        self.seen: set[int] = set()
        self.bytes = {"params": 0, "grads": 0, "optimizer": 0}

    def add(self, kind: str, tensor) -> None:
        if isinstance(tensor, DTensor):
            tensor = tensor.to_local()  # this rank's shard
        if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.bytes[kind] += storage.nbytes()


def measure(module: torch.nn.Module, zero_optimizer, optimizer) -> dict[str, int]:
    return measure_all([module], [zero_optimizer] if zero_optimizer else [], [optimizer])


def measure_all(modules: list, zero_optimizers: list, optimizers: list) -> dict[str, int]:
    """Bytes of the modules' weights and gradients, the optimizers' state and DeepSpeed's fp32
    partitions (`zero_optimizers`: DeepSpeed's ZeRO optimizers), each storage once."""
    held = Holdings()
    params = [p for module in modules for p in module.parameters()]
    for param in params:
        held.add("params", getattr(param, "ds_tensor", None))  # ZeRO-3's own partition
        held.add("params", param.data)  # empty under ZeRO-3 between forward passes
    masters = [
        p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]
    ]
    for zero in zero_optimizers:
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            masters += list(getattr(zero, name, []))  # DeepSpeed's fp32 partitions
    for param in [*params, *masters]:
        held.add("grads", param.grad)
    for master in masters:
        held.add("optimizer", master)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                held.add("optimizer", value)
    return held.bytes


def worker(rank: int, world: int, port: int, overrides: list[str], flavor: str, results) -> None:
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
    batch = 4 * world
    spec = spec_module.load(
        REPO / "jobs" / "gpt_python_docs.yaml",
        [
            *overrides,
            f"model.flavor={flavor}",
            f"data.batch_size={batch}",
            f"train.workers={world}",
        ],
    )
    family = get_family("gpt")
    step_fn = family.make_step()
    data = open_data(spec.data)
    torch.manual_seed(spec.train.seed)
    models = step_fn.build(family.config(flavor=flavor, overrides={}), data.info)
    params = sum(p.numel() for p in models["gpt"].parameters())
    strategy = make_strategy(spec, device=torch.device("cpu"), world=world, rank=rank)
    strategy.prepare(models, step_fn)
    engine = getattr(strategy, "engines", {}).get("gpt")
    module = engine.module if engine else strategy.raw["gpt"]
    measured: list[dict[str, int]] = []

    def at_step(optimizer, args, kwargs) -> None:
        if optimizer.state:  # the second step: the moments exist
            measured.append(measure(module, engine.optimizer if engine else None, optimizer))

    hook = register_optimizer_step_pre_hook(at_step)
    batches = data.stream.batches(batch_size=batch, rank=rank, world=world)
    for step in (1, 2):

        def plan(offset: int, step: int = step) -> DrawPlan:
            return DrawPlan(0, step, "gpt", batches.first_row + offset, batch)

        strategy.train_phase("gpt", next(batches)[0], plan)
    batches.close()
    hook.remove()
    results.put((rank, params, measured[-1]))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(overrides: list[str], *, world: int, flavor: str) -> tuple[int, list[dict[str, int]]]:
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(
        worker,
        args=(world, free_port(), overrides, flavor, results),
        nprocs=world,
        start_method="spawn",
    )
    per_rank = sorted(results.get() for _ in range(world))
    return per_rank[0][1], [held for _, _, held in per_rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flavor", default="small")
    parser.add_argument("--quick", action="store_true", help="the debug flavor")
    parser.add_argument("--json", type=Path, help="also write the figures here (flat JSON)")
    args = parser.parse_args()
    world = args.workers
    if args.quick:
        args.flavor = "debug"

    rows = {}
    for name, (overrides, stage, width) in RUNS.items():
        params, per_rank = run(overrides, world=world, flavor=args.flavor)
        worst = max(per_rank, key=lambda held: sum(held.values()))
        rows[name] = {
            **{kind: value / params for kind, value in worst.items()},
            "total": sum(worst.values()) / params,
            "formula": formula(stage, width=width, world=world),
            "psi": params,
        }
    ddp = rows["ddp"]["total"]
    print(f"GPT {args.flavor}: Ψ = {rows['ddp']['psi']:,} parameters, N = {world} workers")
    print("bytes per parameter held by the fullest rank at its optimizer step")
    header = ("params", "grads", "optim", "total")
    print(f"{'strategy':<12}" + "".join(f"{h:>8}" for h in header) + f"{'formula':>9}{'x DDP':>8}")
    for name, row in rows.items():
        print(
            f"{name:<12}{row['params']:>8.2f}{row['grads']:>8.2f}{row['optimizer']:>8.2f}"
            f"{row['total']:>8.2f}{row['formula']:>9.2f}{row['total'] / ddp:>8.3f}"
        )
    ratio = rows["zero3"]["total"] / ddp
    print(f"ZeRO-3 / DDP per-rank model state at N = {world}: {ratio:.3f} (target <= 0.55)")
    fsdp = rows["fsdp"]["total"] / ddp
    print(f"fsdp / DDP per-rank model state at N = {world}: {fsdp:.3f} (target <= 0.55)")
    if args.json:
        figures = {"ratio": ratio, "fsdp_ratio": fsdp, **flatten(rows)}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
