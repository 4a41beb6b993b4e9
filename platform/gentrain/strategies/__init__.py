"""Parallelism strategies behind one protocol; the trainer never knows which one runs."""

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from gentrain.spec import JobSpec

STRATEGIES = ("ddp", "deepspeed")


class Strategy(Protocol):
    accumulation_steps: int  # micro-batches per optimizer step

    def prepare(self, models: dict[str, nn.Module]) -> None:
        """Place, wrap and give optimizers to the networks."""
        ...

    def phase(self, name: str) -> AbstractContextManager[Mapping[str, nn.Module]]:
        """The context of phase `name`'s forward passes (mixed precision and the like); it gives
        the networks to run them with."""
        ...

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward one micro-batch's `loss` into network `name`; at the last micro-batch of a
        step, clip, step its optimizer and schedule."""
        ...

    def readable(self, name: str) -> AbstractContextManager[Mapping[str, nn.Module]]:
        """Network `name` as a plain module whose whole weights can be read, on every rank (a
        collective where weights are sharded): for the family's after_update."""
        ...

    def full_models(self) -> AbstractContextManager[dict[str, nn.Module]]:
        """Plain modules with the whole weights, for sampling, evaluation and export, while the
        context lasts. Every rank enters it (gathering sharded weights is collective); rank 0
        gets all the networks."""
        ...

    def save(self, directory: Path, *, rank: int) -> None: ...

    def load(self, directory: Path) -> None: ...


def make_strategy(spec: JobSpec, *, device: torch.device, world: int, rank: int) -> Strategy:
    name: Literal["ddp", "deepspeed"] = spec.train.strategy
    if name == "deepspeed":
        from gentrain.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy(spec, device=device, world=world, rank=rank)
    from gentrain.strategies.ddp import DDPStrategy

    return DDPStrategy(spec, device=device, world=world, rank=rank)
