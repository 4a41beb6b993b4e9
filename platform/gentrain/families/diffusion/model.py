"""A DDPM: a small UNet that predicts the noise in x_t, its noise schedule, and an exponential
moving average (EMA) of the UNet's weights, which sampling uses.

UNet: stem conv -> per level [residual blocks, skip out, stride-2 conv (width x2)] -> residual
blocks at the bottom -> per level [nearest upsample + conv (width /2), concat skip, residual
blocks] -> GroupNorm, SiLU, conv. Levels halve H and W down to no less than 4; every residual block
adds a projection of the sinusoidal timestep embedding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gentrain import noise
from gentrain.families.diffusion.config import DiffusionConfig
from gentrain.families.diffusion.schedule import Denoiser, NoiseSchedule


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoids of the integer timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, config: DiffusionConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(config.norm_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(config.norm_groups, out_ch)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # the timestep, per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _levels(wanted: int, height: int, width: int) -> int:
    """Resolutions, up to `wanted`: each halves even sides, none goes below 4 pixels."""
    levels = 1
    while levels < wanted and height % 2 == 0 and width % 2 == 0 and min(height, width) >= 8:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


class UNet(nn.Module):
    """eps(x_t, t): (B, C, H, W), (B,) -> the predicted noise, (B, C, H, W)."""

    def __init__(self, config: DiffusionConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = image_shape
        widths = [config.channels * 2**i for i in range(_levels(config.levels, height, width))]
        self.emb_in, emb_dim = config.channels, 4 * config.channels
        self.time_mlp = nn.Sequential(
            nn.Linear(self.emb_in, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(channels, widths[0], 3, 1, 1)

        def blocks(in_ch: int, out_ch: int) -> nn.ModuleList:
            return nn.ModuleList(
                ResBlock(in_ch if i == 0 else out_ch, out_ch, emb_dim, config)
                for i in range(config.blocks)
            )

        upper, lower = widths[:-1], widths[1:]  # each level above the bottom and the one below
        self.down = nn.ModuleList(blocks(w, w) for w in upper)
        self.downsample = nn.ModuleList(
            nn.Conv2d(w, w2, 3, 2, 1) for w, w2 in zip(upper, lower, strict=True)
        )
        self.middle = blocks(widths[-1], widths[-1])
        self.upsample = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(w2, w, 3, 1, 1))
            for w, w2 in zip(upper, lower, strict=True)
        )
        self.up = nn.ModuleList(blocks(2 * w, w) for w in upper)  # the skip doubles the input
        self.head = nn.Sequential(
            nn.GroupNorm(config.norm_groups, widths[0]),
            nn.SiLU(),
            nn.Conv2d(widths[0], channels, 3, 1, 1),
        )
        nn.init.zeros_(self.head[-1].weight)  # predicts zero noise at first
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_in))  # (B, 4 * channels)
        h = self.stem(x)  # (B, channels, H, W)
        skips = []
        for level, downsample in zip(self.down, self.downsample, strict=True):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            h = downsample(h)  # half the size, twice the width
        for block in self.middle:
            h = block(h, emb)
        for level, upsample in zip(reversed(self.up), reversed(self.upsample), strict=True):
            h = torch.cat([upsample(h), skips.pop()], dim=1)  # upsampled, then its skip
            for block in level:
                h = block(h, emb)
        return self.head(h)


class EMA(nn.Module):
    """An exponential moving average of a network's parameters, held as buffers: saved in the
    state dict and moved by .to() with the model, but never handed to an optimizer."""

    def __init__(self, net: nn.Module, *, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [name for name, _ in net.named_parameters()]
        for name, param in net.named_parameters():
            self.register_buffer(_buffer_name(name), param.detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """ema <- d ema + (1 - d) param, d = min(decay, (1 + n) / (10 + n)) at the n-th update:
        a short memory early on, so that the average does not keep the random initial weights."""
        self.updates += 1
        decay = torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
        for name, param in net.named_parameters():
            getattr(self, _buffer_name(name)).lerp_(param.detach(), 1 - decay)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged parameters under the network's own names (for functional_call)."""
        return {name: getattr(self, _buffer_name(name)) for name in self.names}


def _buffer_name(param_name: str) -> str:
    return param_name.replace(".", "__")  # buffer names cannot hold dots


class Diffusion(nn.Module):
    def __init__(self, config: DiffusionConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape, self.sample_steps = image_shape, config.sample_steps
        self.unet = UNet(config, image_shape)
        self.schedule = NoiseSchedule(config.schedule, timesteps=config.timesteps)
        self.ema = EMA(self.unet, decay=config.ema_decay) if config.ema_decay > 0 else None

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """Per image: the noise-prediction MSE at a uniformly drawn timestep, (B,)."""
        t, eps = self.draw(x0)
        predicted = self.unet(self.schedule.q_sample(x0, t, eps), t)
        return (predicted.float() - eps).pow(2).flatten(1).mean(1)

    def draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training step's noise: a timestep (B,) and the noise (B, C, H, W) of each image."""
        t = noise.randint(self.schedule.timesteps, (x0.shape[0],), device=x0.device)
        return t, noise.randn(x0.shape, device=x0.device)

    def denoiser(self) -> Denoiser:
        """The UNet run with the EMA weights (the trained ones when the EMA is off)."""
        if self.ema is None:
            return self.unet
        weights = self.ema.weights()
        return lambda x, t: functional_call(self.unet, weights, (x, t))

    @torch.no_grad()
    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """DDIM from x_T = noise (B, C, H, W): images in [-1, 1], a deterministic map."""
        return self.schedule.ddim_sample(self.denoiser(), noise, steps=self.sample_steps)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images in [-1, 1], (n, C, H, W)."""
        device = next(self.parameters()).device
        return self.generate(torch.randn(n, *self.image_shape, device=device))


class Generator(nn.Module):
    """The diffusion model run generatively, x_T -> x_0: what export logs. Its forward returns
    one tensor, as MLflow's signature needs; the model's own returns the training loss."""

    def __init__(self, diffusion: Diffusion):
        super().__init__()
        self.diffusion = diffusion

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.diffusion.generate(noise)  # noise: (B, C, H, W)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.diffusion.sample(n)
