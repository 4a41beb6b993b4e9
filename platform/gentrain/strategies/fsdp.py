"""Fully sharded data parallel (FSDP2, torch's fully_shard): each rank keeps 1/world of every
network's weights, gradients and optimizer state, and gathers a block's weights only while the
block runs. The blocks sharded one by one are those a pipeline cuts between (the family's
PipelineForm); a network's remaining weights are sharded with the network itself."""

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

from gentrain.families import FamilyStep
from gentrain.optim import build_optimizer, build_schedule
from gentrain.spec import JobSpec
from gentrain.strategies import blocks, on_device
from gentrain.strategies.ddp import DDPStrategy


class FSDPStrategy(DDPStrategy):
    """DDP's update and checkpoints (both are written with torch.distributed.checkpoint) over
    sharded networks. Mixed precision is FSDP's own (bf16 weights in the blocks, fp32 gradient
    reduction and master weights), not autocast."""

    def __init__(self, spec: JobSpec, *, device: torch.device, world: int, rank: int):
        super().__init__(spec, device=device, world=world, rank=rank)
        self.amp_dtype = None  # no autocast, no loss scaler: the MixedPrecisionPolicy casts

    def prepare(self, models: dict[str, nn.Module], step_fn: FamilyStep) -> None:
        self.step_fn = step_fn
        found = blocks.of_family(models, step_fn)
        sharding = self._sharding()
        for name, model in models.items():
            model.to(self.device)
            if self.rank == 0:
                self.copies[name] = copy.deepcopy(model).cpu()
            units = blocks.units(model, found)
            blocks.checkpoint_and_compile(model, units, self.spec.train)
            for unit in units:
                fully_shard(unit, **sharding)
            fully_shard(model, **sharding)
            self.raw[name] = self.wrapped[name] = model
            optimizer = build_optimizer(model.parameters(), self.spec.optim)
            self.optimizers[name] = optimizer
            self.schedules[name] = build_schedule(
                optimizer, self.spec.optim, max_steps=self.spec.train.max_steps
            )
            self.scalers[name] = torch.amp.GradScaler(self.device.type, enabled=False)

    def _sharding(self) -> dict:
        train = self.spec.train
        options = {
            "mesh": init_device_mesh(self.device.type, (self.world,)),
            "reshard_after_forward": train.fsdp.reshard_after_forward,
        }
        if train.precision == "bf16":
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        if train.fsdp.offload == "cpu":
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=train.use_gpu)
        return options

    @contextmanager
    def readable(self, name: str):
        """Network `name` with every block's weights gathered, on every rank (collective)."""
        sharded = [m for m in self.raw[name].modules() if isinstance(m, FSDPModule)]
        for module in sharded:
            module.unshard()
        try:
            yield {name: self.raw[name]}
        finally:
            for module in sharded:
                module.reshard()

    @contextmanager
    def full_models(self):
        """Rank 0's plain copies hold the gathered weights (every rank takes part in gathering)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        for name, model in self.raw.items():
            state = get_model_state_dict(model, options=options)
            if self.rank == 0:
                self.copies[name].load_state_dict(state)
        with on_device(self.copies, self.device) as models:
            yield models
