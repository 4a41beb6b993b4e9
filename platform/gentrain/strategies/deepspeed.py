"""DeepSpeed: one engine per network (ZeRO stage 0-3, optional CPU/NVMe offload), configured from
the spec's typed `train.deepspeed` fields, with `config` merged on top for experts."""

import copy
import json
import os
import re
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gentrain import checkpoints
from gentrain.families import FamilyStep
from gentrain.optim import build_optimizer, build_schedule
from gentrain.spec import JobSpec
from gentrain.strategies import MicroBatched, layout, on_device, whole_state

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_AUTOCAST_NAMES = {"bf16": "bfloat16", "fp16": "float16"}
_FUSED = {"adam": "Adam", "adamw": "AdamW"}  # DeepSpeed's own (fused / CPU) optimizers


def deepspeed_config(spec: JobSpec, *, world: int) -> dict[str, Any]:
    """The DeepSpeed config of a job: batch sizes from data.batch_size, ZeRO and offload from
    train.deepspeed, precision from train.precision, then train.deepspeed.config on top."""
    train, ds = spec.train, spec.train.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    for part in ("optimizer", "param"):
        device = getattr(ds, f"offload_{part}")
        if device != "none":
            zero[f"offload_{part}"] = {"device": device, "pin_memory": train.use_gpu}
            if device == "nvme":
                zero[f"offload_{part}"]["nvme_path"] = ds.nvme_path
    config: dict[str, Any] = {
        "train_batch_size": spec.data.batch_size,
        "train_micro_batch_size_per_gpu": spec.data.batch_size
        // (world * ds.gradient_accumulation_steps),
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's optimizers, where ours are not used
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the trainer reports progress
        "wall_clock_breakdown": False,
    }
    # Always set: DeepSpeed clips to norm 1.0 when the key is absent; 0 turns clipping off.
    config["gradient_clipping"] = ds.gradient_clipping or spec.optim.grad_clip or 0.0
    if train.precision in _AUTOCAST_NAMES:
        # fp32 weights with autocast, as DDP: a family's own fp32 state (spectral norm's power
        # vectors, an EMA) keeps working, and DDP and DeepSpeed runs compare like for like.
        config["torch_autocast"] = {"enabled": True, "dtype": _AUTOCAST_NAMES[train.precision]}
    if train.use_gpu and spec.optim.name in _FUSED:
        optim = spec.optim
        params = {"lr": optim.lr, "betas": list(optim.betas), "weight_decay": optim.weight_decay}
        config["optimizer"] = {"type": _FUSED[optim.name], "params": params}
    return _merge(config, ds.config)


class WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine, loading with torch.load(weights_only=True): tensors, plain
    data and the few DeepSpeed types its checkpoints hold, never an arbitrary pickled object
    (DeepSpeed's own engine unpickles anything)."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name: str):  # saving and the rest: DeepSpeed's engine
        return getattr(self.engine, name)

    def load(self, path: str, map_location=None):
        return whole_state.load_weights_only(path, map_location=map_location)


def _load_weights_only(engine) -> None:
    """The engine's checkpoints load through WeightsOnlyLoads, unless the expert's config chose
    another checkpoint engine than DeepSpeed's default."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine = WeightsOnlyLoads(engine.checkpoint_engine)


def _plain_cuda_arch_list() -> None:
    """DeepSpeed 0.19's op builder cannot parse arch-specific entries such as '9.0a' in
    TORCH_CUDA_ARCH_LIST (set in NVIDIA's images), which breaks building its fused optimizers."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = re.sub(r"(\d+\.\d+)[a-z]+", r"\1", archs)


def _no_shared_memory_all_reduce() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce when it first sets up its
    communication (about a minute on 2 cores, again for every new environment) that only its
    inference and tensor-parallel layers call: training reduces through torch.distributed. Mark
    it unavailable, so that it is not built."""
    from deepspeed import ops

    ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _share_fp32_master(optimizer: Any) -> None:
    """ZeRO-3 keeps a master partition beside each rank's partition of the weights. When the
    weights are fp32 already (fp32 training, torch autocast) DeepSpeed 0.19 means to use them as
    the master ("we don't need another copy of the weights", stage3.py), but it compares a
    torch.device with a device name, which is never equal, and clones them. Share them, as it
    intends: a copy of the weights less per rank (bench/zero_memory.py)."""
    if optimizer.offload_optimizer:
        return
    for own, master in zip(
        optimizer.fp16_partitioned_groups_flat, optimizer.fp32_partitioned_groups_flat, strict=True
    ):
        if own is not None and own.dtype == master.dtype and own.device == master.device:
            master.data = own.data  # the same values: the master was cloned from them


def _create_optimizer_state(zero: Any, *, stage: int) -> None:
    """The state of a ZeRO optimizer that has not stepped yet (torch's optimizers create theirs
    at the first step), to be overwritten: a step of zero gradients at learning rate 0 over
    each flat fp32 partition. ZeRO-3 hands its torch optimizer one partition at a time."""
    inner = zero.optimizer
    if stage < 3:
        _step_nothing(inner, [p for group in inner.param_groups for p in group["params"]])
        zero._lazy_init_hp_params_optimizer_state()  # where ZeRO-1/2 look it up
        return
    for sub_group, flat in enumerate(zero.fp32_partitioned_groups_flat):
        group = inner.param_groups[zero.sub_group_to_group_id[sub_group]]
        held, group["params"] = group["params"], [flat]
        try:
            _step_nothing(inner, [flat])
        finally:
            group["params"] = held


def _step_nothing(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    fresh = [p for p in params if p not in optimizer.state]
    if not fresh:
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for param in fresh:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    for param in fresh:
        param.grad = None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class DeepSpeedStrategy(MicroBatched):
    def __init__(self, spec: JobSpec, *, device: torch.device, world: int, rank: int):
        import deepspeed  # only workers of a deepspeed job pay for its import

        _plain_cuda_arch_list()
        if device.type == "cpu":
            _no_shared_memory_all_reduce()

        self.deepspeed = deepspeed
        self.spec, self.device, self.world, self.rank = spec, device, world, rank
        self.data_rank, self.data_world = rank, world
        self.config = deepspeed_config(spec, world=world)
        self.amp_dtype = _AMP_DTYPES.get(spec.train.precision)
        self.accumulation_steps = spec.train.deepspeed.gradient_accumulation_steps
        self.engines: dict[str, Any] = {}
        # Evaluation and export run on plain copies (rank 0): ZeRO-3 partitions the engines'
        # weights across ranks, and every engine's module carries DeepSpeed's hooks.
        self.copies: dict[str, nn.Module] = {}

    def prepare(self, models: dict[str, nn.Module], step_fn: FamilyStep) -> None:
        self.step_fn = step_fn
        for name, model in models.items():
            model.to(self.device)
            if self.rank == 0:
                self.copies[name] = copy.deepcopy(model).cpu()
            if "optimizer" in self.config:  # DeepSpeed builds its own; the schedule follows it
                optimizer, schedule = None, self._schedule
            else:
                optimizer = build_optimizer(model.parameters(), self.spec.optim)
                schedule = self._schedule(optimizer)
            engine, *_ = self.deepspeed.initialize(
                model=model,
                model_parameters=[p for p in model.parameters() if p.requires_grad],
                optimizer=optimizer,
                lr_scheduler=schedule,
                config=copy.deepcopy(self.config),
                dist_init_required=False,  # Ray Train's process group is the one to use
            )
            if self.config["zero_optimization"]["stage"] == 3:
                _share_fp32_master(engine.optimizer)
            _load_weights_only(engine)
            self.engines[name] = engine

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return build_schedule(optimizer, self.spec.optim, max_steps=self.spec.train.max_steps)

    @contextmanager
    def phase(self, name: str):
        """Phase `name` runs its own network's engine and the others' plain modules, frozen: their
        engines must see no forward or backward of a phase in which they do not step (a GAN's D
        while G trains)."""
        others = {other: e.module for other, e in self.engines.items() if other != name}
        frozen = [p for module in others.values() for p in module.parameters() if p.requires_grad]
        for param in frozen:
            param.requires_grad_(False)
        try:
            with self._autocast():
                yield {name: self.engines[name], **others}
        finally:
            for param in frozen:
                param.requires_grad_(True)

    def _autocast(self) -> AbstractContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        # Also around the other networks' plain modules, which DeepSpeed's own autocast misses.
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def update(self, name: str, loss: torch.Tensor) -> None:
        """One micro-batch: DeepSpeed scales by the accumulation steps and steps the optimizer
        and schedule (after clipping) at each accumulation boundary."""
        engine = self.engines[name]
        engine.backward(loss)
        engine.step()

    @contextmanager
    def readable(self, name: str):
        """Network `name` with its whole weights readable, on every rank (collective)."""
        module = self.engines[name].module
        zero3 = self.config["zero_optimization"]["stage"] == 3
        with self.deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=zero3):
            yield {name: module}

    @contextmanager
    def full_models(self):
        """Rank 0 gets plain copies holding the engines' weights: DeepSpeed's hooks and process
        groups stay behind (they cannot be pickled with the exported model). The copies wait on
        the CPU between evaluations, off the accelerator's memory."""
        zero3 = self.config["zero_optimization"]["stage"] == 3
        for name, engine in self.engines.items():
            params = list(engine.module.parameters())
            with self.deepspeed.zero.GatheredParameters(params, enabled=zero3):  # collective
                if self.rank == 0:
                    self.copies[name].load_state_dict(engine.module.state_dict())
        with on_device(self.copies, self.device) as models:
            yield models

    def save(self, directory: Path, *, rank: int) -> None:
        for name, engine in self.engines.items():  # every rank writes its own shards
            engine.save_checkpoint(str(directory / "deepspeed" / name), tag="state")

    def load(self, directory: Path) -> None:
        """DeepSpeed's own loading where the checkpoint is of this ZeRO stage and world size;
        else the checkpoint read whole (through DeepSpeed's universal checkpoint, where it is
        DeepSpeed's) and handed to the engines parameter by parameter."""
        state = json.loads((directory / checkpoints.STATE).read_text())
        saved = state.get("layout", layout(self.spec.train))  # older ones: this job's own
        stage = self.config["zero_optimization"]["stage"]
        if saved.get("zero_stage") == stage and state["world"] == self.world:
            for name, engine in self.engines.items():
                path, _ = engine.load_checkpoint(str(directory / "deepspeed" / name), tag="state")
                if path is None:
                    raise RuntimeError(f"no DeepSpeed checkpoint of {name} under {directory}")
            return
        modules = {name: engine.module for name, engine in self.engines.items()}
        whole = whole_state.read(directory, whole_state.parameter_names(modules))
        for name, engine in self.engines.items():
            self._load_whole(engine, whole.weights[name], whole.moments[name], stage=stage)
            engine.lr_scheduler.load_state_dict(whole.schedules[name])

    def _load_whole(self, engine, weights, moments, *, stage: int) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        module = engine.module
        params = list(module.parameters())
        with self.deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=stage == 3):
            module.load_state_dict(weights)
        named = dict(module.named_parameters())
        if stage == 0:  # a plain optimizer over the module's own parameters
            names = whole_state.parameter_names({"m": module})["m"]
            template = engine.optimizer.state_dict()
            engine.optimizer.load_state_dict(
                {
                    "state": {i: moments[key] for i, key in enumerate(names)},
                    "param_groups": template["param_groups"],
                }
            )
            return
        _create_optimizer_state(engine.optimizer, stage=stage)
        step = None
        for key, param in named.items():
            safe_set_full_fp32_param(param, weights[key].to(self.device))
            for kind, value in moments[key].items():
                if kind == "step":
                    step = value
                else:
                    safe_set_full_optimizer_state(param, value.to(self.device), kind)
        for flat_state in engine.optimizer.optimizer.state.values():  # ZeRO's flat partitions
            if "step" in flat_state and step is not None:
                flat_state["step"] = torch.as_tensor(step).to(flat_state["step"])
