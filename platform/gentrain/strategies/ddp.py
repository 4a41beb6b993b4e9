"""Data parallel: torch DistributedDataParallel, one optimizer per network, autocast on GPU."""

import copy
import math
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from gentrain.families import FamilyStep
from gentrain.optim import build_optimizer, build_schedule
from gentrain.spec import JobSpec
from gentrain.strategies import MicroBatched, blocks, dcp_format, on_device, whole_state

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DDPStrategy(MicroBatched):
    def __init__(self, spec: JobSpec, *, device: torch.device, world: int, rank: int):
        self.spec, self.device, self.world, self.rank = spec, device, world, rank
        self.data_rank, self.data_world = rank, world
        self.amp_dtype = _AMP_DTYPES.get(spec.train.precision)
        self.raw: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}  # what forward passes run
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedules: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        # fp16 needs loss scaling against underflow; one scaler per network keeps their steps apart.
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        # rank 0's plain networks for evaluation and export, where the trained ones are compiled
        # or recompute their activations
        self.copies: dict[str, nn.Module] = {}
        self.saving_group = None  # train.checkpoint_async's process group

    def prepare(self, models: dict[str, nn.Module], step_fn: FamilyStep) -> None:
        self.step_fn = step_fn
        found = blocks.of_family(models, step_fn) if self._per_block() else []
        for name, model in models.items():
            model.to(self.device)
            if found:
                if self.rank == 0:
                    self.copies[name] = copy.deepcopy(model).cpu()
                blocks.checkpoint_and_compile(model, blocks.units(model, found), self.spec.train)
            self.raw[name] = model
            optimizer = build_optimizer(model.parameters(), self.spec.optim)
            self.optimizers[name] = optimizer
            self.schedules[name] = build_schedule(
                optimizer, self.spec.optim, max_steps=self.spec.train.max_steps
            )
            self.scalers[name] = torch.amp.GradScaler(
                self.device.type, enabled=self.amp_dtype is torch.float16
            )
            self.wrapped[name] = _data_parallel(model) if self.world > 1 else model

    def _per_block(self) -> bool:
        return self.spec.train.activation_checkpointing or self.spec.train.compile

    @contextmanager
    def readable(self, name: str):
        yield {name: self.raw[name]}

    @contextmanager
    def full_models(self):
        if not self.copies:
            yield dict(self.raw)  # every replica holds the whole weights
            return
        for name, copied in self.copies.items():
            copied.load_state_dict(self.raw[name].state_dict())
        with on_device(self.copies, self.device) as models:
            yield models

    @contextmanager
    def phase(self, name: str):
        # Every network runs wrapped: a DDP module expects its backward, and each update zeroes
        # its network's gradients first, so another phase's leftovers never count.
        if self.amp_dtype is None:
            yield self.wrapped
            return
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            yield self.wrapped

    def update(self, name: str, loss: torch.Tensor) -> None:
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        # replicas share their gradients: all of them see a NaN any of them made, and all skip
        if self.spec.train.on_nan == "skip_step" and not _finite_gradients(self.raw[name]):
            optimizer.zero_grad(set_to_none=True)
            self.schedules[name].step()
            return
        if self.spec.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.raw[name].parameters(), self.spec.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        self.schedules[name].step()

    def save(self, directory: Path, *, rank: int) -> Future | None:
        schedules = {
            name: {"schedule": self.schedules[name].state_dict(), "scaler": scaler.state_dict()}
            for name, scaler in self.scalers.items()
        }
        if self.spec.train.checkpoint_async and self.saving_group is None and dist.is_initialized():
            # the writes' own collectives run beside training's: on a group of their own
            self.saving_group = dist.new_group(backend="gloo")
        return dcp_format.save(
            directory,
            self.raw,
            self.optimizers,
            schedules,
            rank=rank,
            asynchronous=self.spec.train.checkpoint_async,
            group=self.saving_group,
        )

    def load(self, directory: Path) -> None:
        if dcp_format.written(directory):  # ddp's or fsdp's, at any world size
            for name, parts in dcp_format.load(directory, self.raw, self.optimizers).items():
                self.schedules[name].load_state_dict(parts["schedule"])
                self.scalers[name].load_state_dict(parts["scaler"])
        elif (directory / "strategy.pt").is_file():
            self._load_single_file(directory)
        else:  # DeepSpeed's
            self._load_whole(whole_state.read(directory, whole_state.parameter_names(self.raw)))

    def _load_whole(self, whole: whole_state.WholeState) -> None:
        """Full-size weights and optimizer state, laid out as this strategy holds them."""
        options = StateDictOptions(full_state_dict=True)
        for name, model in self.raw.items():
            optimizer = self.optimizers[name]
            template = get_optimizer_state_dict(model, optimizer, options=options)
            moments = {
                key: whole_state.like(whole.moments[name][key], state)
                for key, state in template["state"].items()
            }
            set_state_dict(
                model,
                optimizer,
                model_state_dict=whole.weights[name],
                optim_state_dict={"state": moments, "param_groups": template["param_groups"]},
                options=options,
            )
            self.schedules[name].load_state_dict(whole.schedules[name])

    def _load_single_file(self, directory: Path) -> None:
        """An older checkpoint of ddp: rank 0's whole state in one file (strategy.pt)."""
        state = torch.load(directory / "strategy.pt", map_location=self.device, weights_only=True)
        for name, parts in state.items():
            self.raw[name].load_state_dict(parts["model"])
            self.optimizers[name].load_state_dict(parts["optimizer"])
            self.schedules[name].load_state_dict(parts["schedule"])
            self.scalers[name].load_state_dict(parts["scaler"])


def _data_parallel(model: nn.Module) -> DistributedDataParallel:
    """DDP; on CPU with one bucket, one all-reduce after the backward pass: with a thread per
    core no core is idle, so overlapping the all-reduce with the backward only takes time from
    the backward. (On a 2-core VM, 2 workers training GPT small with 8 blocks, one bucket and
    DDP's default two measured within the machine's noise of each other.) On GPUs NCCL overlaps
    the backward: DDP's buckets stay."""
    if next(model.parameters()).device.type != "cpu":
        return DistributedDataParallel(model)
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return DistributedDataParallel(model, bucket_cap_mb=math.ceil(size_mb) + 1)


def _finite_gradients(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)
