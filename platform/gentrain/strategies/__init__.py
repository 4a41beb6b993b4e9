"""Parallelism strategies behind one protocol; the trainer never knows which one runs."""

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from gentrain.spec import JobSpec

STRATEGIES = ("ddp",)


class Strategy(Protocol):
    def prepare(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Place, wrap and give optimizers to the networks; returns the modules to run forward."""
        ...

    def unwrapped(self, name: str) -> nn.Module:
        """The plain module, for sampling, evaluation and export."""
        ...

    def autocast(self) -> AbstractContextManager:
        """The mixed-precision context of forward passes."""
        ...

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward `loss` into network `name`, clip, step its optimizer and schedule."""
        ...

    def save(self, directory: Path, *, rank: int) -> None: ...

    def load(self, directory: Path) -> None: ...


def make_strategy(spec: JobSpec, *, device: torch.device, world: int) -> Strategy:
    name: Literal["ddp"] = spec.train.strategy
    assert name == "ddp", name
    from gentrain.strategies.ddp import DDPStrategy

    return DDPStrategy(spec, device=device, world=world)
