"""Training noise that does not depend on how a batch is split across workers.

A family's loss draws its noise (latents, diffusion steps, dequantisation, masks) through the
functions here. While the trainer has a draw plan in place, the i-th draw of a step and phase
comes from a generator seeded by (seed, step, phase, i) for the whole global batch, and each
worker keeps its own rows: one worker, two DDP workers, DeepSpeed micro-batches and pipeline
micro-batches all see the same noise for the same example. Without a plan (sampling, evaluation,
tests), the draws come from torch's global RNG.
"""

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass
class DrawPlan:
    seed: int
    step: int
    phase: str
    first_row: int  # this worker's first example in the global batch
    global_rows: int  # examples in the global batch
    draws: int = 0

    def generator(self, device: torch.device) -> torch.Generator:
        key = f"{self.seed}/{self.step}/{self.phase}/{self.draws}".encode()
        self.draws += 1
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        return torch.Generator(device).manual_seed(seed)


_PLAN: ContextVar[DrawPlan | None] = ContextVar("gentrain_draw_plan", default=None)


@contextmanager
def planned(plan: DrawPlan) -> Iterator[None]:
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def randn(shape: Sequence[int], *, device: torch.device) -> torch.Tensor:
    """Standard normal noise; shape[0] is the number of examples."""
    return _draw(torch.randn, shape, device=device)


def rand(shape: Sequence[int], *, device: torch.device) -> torch.Tensor:
    """Uniform noise in [0, 1); shape[0] is the number of examples."""
    return _draw(torch.rand, shape, device=device)


def randint(high: int, shape: Sequence[int], *, device: torch.device) -> torch.Tensor:
    """Integers in [0, high); shape[0] is the number of examples."""
    return _draw(lambda *size, **kw: torch.randint(high, size, **kw), shape, device=device)


def _draw(draw, shape: Sequence[int], *, device: torch.device) -> torch.Tensor:
    plan = _PLAN.get()
    if plan is None:
        return draw(*shape, device=device)
    rows, rest = shape[0], tuple(shape[1:])
    whole = draw(plan.global_rows, *rest, device=device, generator=plan.generator(device))
    return whole[plan.first_row : plan.first_row + rows]
