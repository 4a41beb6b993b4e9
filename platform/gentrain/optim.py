"""Optimizers and learning-rate schedules named in the spec's `optim` section."""

import math
from collections.abc import Iterable

import torch

from gentrain.spec_sections import OptimSection


def build_optimizer(
    params: Iterable[torch.nn.Parameter], optim: OptimSection
) -> torch.optim.Optimizer:
    common = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    if optim.name == "sgd":
        return torch.optim.SGD(params, momentum=optim.momentum, **common)
    if optim.name == "adam":
        return torch.optim.Adam(params, betas=optim.betas, **common)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, betas=optim.betas, **common)
    assert optim.name == "adagrad", optim.name
    return torch.optim.Adagrad(params, **common)


def build_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimSection, *, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup_steps`, then constant, cosine or linear decay to zero."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
        if optim.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
