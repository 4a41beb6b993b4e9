"""The noise schedule of a DDPM (Ho et al. 2020) and its two samplers.

Timesteps t = 0 .. T-1 index the betas. The forward process has the closed form
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), abar_t = prod_{s <= t} (1 - beta_s). Sampling
runs a noise-predicting denoiser eps(x_t, t) backwards: DDPM's ancestral sampler over all T steps,
or DDIM's deterministic one (Song et al. 2021, eta = 0) over a few evenly spaced timesteps.
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t (B,)) -> noise
MAX_BETA = 0.999  # keeps abar_t > 0: the last step never destroys all of x_0


def linear_betas(timesteps: int) -> torch.Tensor:
    """DDPM's betas, 1e-4 to 0.02 for T = 1000; scaled by 1000 / T so that shorter schedules also
    end near pure noise (Nichol & Dhariwal)."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=MAX_BETA)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's abar at t in [0, 1] (the fraction of the way to T):
    f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) * pi / 2)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(timesteps: int) -> torch.Tensor:
    """beta_t = 1 - abar(t + 1) / abar(t) on the grid t / T, clipped as Nichol & Dhariwal do."""
    abar = cosine_alpha_bar(torch.arange(timesteps + 1, dtype=torch.float64) / timesteps)
    return (1 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)


class NoiseSchedule(nn.Module):
    """The schedule's tensors as non-persistent buffers: they follow .to(device) but stay out of
    the state dict, which holds only weights."""

    def __init__(self, kind: Literal["linear", "cosine"], *, timesteps: int):
        super().__init__()
        betas = {"linear": linear_betas, "cosine": cosine_betas}[kind](timesteps)
        self.timesteps = timesteps
        self.register_buffer("betas", betas.float(), persistent=False)  # (T,)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise: a draw of q(x_t | x_0); t: (B,)."""
        abar = self.alpha_bar[t].view(-1, *[1] * (x0.dim() - 1))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def _abar(self, t: int) -> torch.Tensor:
        """abar_t, with abar_{-1} = 1: the clean image before the first step."""
        return self.alpha_bar[t] if t >= 0 else self.alpha_bar.new_ones(())

    def _predict_x0(
        self, denoiser: Denoiser, x: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's x_0 at step t, clipped to the data's [-1, 1], and the noise consistent
        with that clipped x_0 (clipping keeps samples in range without drift)."""
        abar = self._abar(t)
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = denoiser(x, timestep).float()
        x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        return x0, (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    @torch.no_grad()
    def ddpm_sample(self, denoiser: Denoiser, noise: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling from x_{T-1} = noise through all T steps: each draws x_{t-1} from
        the posterior q(x_{t-1} | x_t, x_0) at the predicted x_0. Images in [-1, 1]."""
        x = noise
        for t in reversed(range(self.timesteps)):
            x0, _ = self._predict_x0(denoiser, x, t)
            abar, abar_prev, beta = self._abar(t), self._abar(t - 1), self.betas[t]
            coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
            coef_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar)
            x = coef_x0 * x0 + coef_xt * x  # the posterior's mean; at t = 0 it is x_0 itself
            if t > 0:
                variance = beta * (1 - abar_prev) / (1 - abar)
                x = x + variance.sqrt() * torch.randn_like(x)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def ddim_sample(self, denoiser: Denoiser, noise: torch.Tensor, *, steps: int) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) over `steps` evenly spaced timesteps from T-1 down to 0:
        x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev) eps. Images in [-1, 1]."""
        assert 1 <= steps <= self.timesteps, steps
        times = torch.linspace(self.timesteps - 1, 0, steps).round().long().tolist()
        x = noise
        for t, t_prev in zip(times, [*times[1:], -1], strict=True):
            x0, eps = self._predict_x0(denoiser, x, t)
            abar_prev = self._abar(t_prev)
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        return x.clamp(-1, 1)
