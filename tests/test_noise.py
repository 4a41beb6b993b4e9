"""Training noise is a function of the example's place in the global batch, not of the split."""

import torch

from gentrain import noise
from gentrain.noise import DrawPlan

CPU = torch.device("cpu")


def _draws(first_row: int, rows: int, *, step: int = 3, phase: str = "vae") -> list[torch.Tensor]:
    plan = DrawPlan(seed=1, step=step, phase=phase, first_row=first_row, global_rows=8)
    with noise.planned(plan):
        return [
            noise.randn((rows, 2, 3), device=CPU),
            noise.rand((rows,), device=CPU),
            noise.randint(10, (rows, 4), device=CPU),
        ]


def test_every_split_of_a_global_batch_draws_the_same_noise():
    whole = _draws(0, 8)
    for rows in (1, 2, 4):  # workers x micro-batches
        parts = [_draws(first, rows) for first in range(0, 8, rows)]
        for i, expected in enumerate(whole):
            assert torch.equal(torch.cat([p[i] for p in parts]), expected)


def test_steps_phases_and_draws_differ():
    base = _draws(0, 8)
    assert not torch.equal(base[0][:, 0, 0], base[1])  # consecutive draws are independent
    assert not torch.equal(_draws(0, 8, step=4)[0], base[0])
    assert not torch.equal(_draws(0, 8, phase="other")[0], base[0])


def test_without_a_plan_draws_follow_the_global_rng():
    torch.manual_seed(0)
    first = noise.randn((4, 2), device=CPU)
    torch.manual_seed(0)
    assert torch.equal(noise.randn((4, 2), device=CPU), first)
    assert not torch.equal(noise.randn((4, 2), device=CPU), first)
