"""RealNVP-style normalizing flow for small images (one level: no multi-scale factoring out).

x -> logit (a fixed bijection onto R) -> affine couplings with checkerboard masks at full
resolution -> squeeze (C, H, W) -> (4C, H/2, W/2) -> [invertible 1x1 conv, affine coupling on
channel halves] x N -> unsqueeze: z has the image's shape and a N(0, I) prior.

Dequantisation: the data are `levels` grey levels evenly spaced in [-1, 1] (17 for the digits:
values 0..16 scaled by /8 - 1), one bin 2 / (levels - 1) wide (1/8 for the digits). Training adds
uniform noise across x's bin, y = x + bin * (u - 1/2), so y lies in [-1 - bin/2, 1 + bin/2]; by
Jensen, -log P(x) <= E_u[-log p(y)] - D log(bin), which `bits_per_dim` reports in bits per pixel.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from gentrain import noise
from gentrain.families.flow.config import FlowConfig


def coupling_net(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, 1, 1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.SiLU(),
        nn.Conv2d(hidden, out_channels, 3, 1, 1),
    )
    # Zero last layer: every coupling starts as the identity, so a deep flow starts stable.
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class AffineCoupling(nn.Module):
    """y = x on the mask's entries; elsewhere y = x * exp(s) + t, (s, t) computed from the rest."""

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        channels = mask.shape[0]
        self.register_buffer("mask", mask, persistent=False)  # (C, H, W), 1 = passed through
        self.net = coupling_net(channels + 1, hidden, 2 * channels)  # the mask as extra input
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))

    def _shift_and_log_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask[:1].expand(kept.shape[0], -1, -1, -1)  # (B, 1, H, W)
        s, t = self.net(torch.cat([kept, mask], dim=1)).chunk(2, dim=1)
        s = self.scale * torch.tanh(s)  # bounded log-scales keep training stable
        return t * (1 - self.mask), s * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, s = self._shift_and_log_scale(x * self.mask)
        return x * s.exp() + t, s.flatten(1).sum(1)  # (B, C, H, W), (B,)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        t, s = self._shift_and_log_scale(y * self.mask)  # y equals x on the mask
        return (y - t) * (-s).exp()


class InvertibleConv1x1(nn.Module):
    """Glow's channel mixing: a learned C x C matrix W applied at every pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0].contiguous())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = x.shape[2] * x.shape[3]
        log_det = torch.linalg.slogdet(self.weight)[1] * pixels
        y = F.conv2d(x, self.weight[:, :, None, None])
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight)[:, :, None, None])


class Logit(nn.Module):
    """[lo, hi] -> R: y = logit(alpha + (1 - 2 alpha) (x - lo) / (hi - lo)), no parameters."""

    def __init__(self, lo: float, hi: float, alpha: float):
        super().__init__()
        self.lo, self.width, self.alpha = lo, hi - lo, alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x - self.lo) / self.width
        log_det = math.log((1 - 2 * self.alpha) / self.width) - p.log() - (-p).log1p()
        return p.log() - (-p).log1p(), log_det.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.lo + (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha) * self.width


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch becomes 4 channels."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


def checkerboard(shape: tuple[int, int, int], parity: int) -> torch.Tensor:
    _, h, w = shape
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    return ((rows + cols) % 2 == parity).float().expand(shape).clone()  # (C, H, W)


class Flow(nn.Module):
    def __init__(self, config: FlowConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = image_shape
        assert height % 2 == 0 and width % 2 == 0, f"image sides must be even: {image_shape}"
        self.image_shape = image_shape
        self.bin_width = 2.0 / (config.levels - 1)
        edge = 1 + self.bin_width / 2  # dequantised pixels fill [-edge, edge]
        self.logit = Logit(-edge, edge, config.logit_alpha)
        self.full = nn.ModuleList(
            AffineCoupling(checkerboard(image_shape, i % 2), config.hidden)
            for i in range(config.checkerboard_couplings)
        )
        squeezed = (channels * 4, height // 2, width // 2)
        half = torch.zeros(squeezed)
        half[: channels * 2] = 1  # the first half of the channels conditions the second
        self.mixes = nn.ModuleList(
            InvertibleConv1x1(squeezed[0]) for _ in range(config.channel_couplings)
        )
        self.couplings = nn.ModuleList(
            AffineCoupling(half, config.hidden) for _ in range(config.channel_couplings)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1 - bin/2, 1 + bin/2] -> z (B, C, H, W), log|det dz/dx| (B,)."""
        z, log_det = self.logit(x)
        for layer in self.full:
            z, ld = layer(z)
            log_det = log_det + ld
        z = squeeze(z)  # (B, 4C, H/2, W/2)
        for mix, coupling in zip(self.mixes, self.couplings, strict=True):
            z, ld_mix = mix(z)
            z, ld = coupling(z)
            log_det = log_det + ld_mix + ld
        return unsqueeze(z), log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x = squeeze(z)
        for mix, coupling in zip(reversed(self.mixes), reversed(self.couplings), strict=True):
            x = mix.inverse(coupling.inverse(x))
        x = unsqueeze(x)
        for layer in reversed(self.full):
            x = layer.inverse(x)
        return self.logit.inverse(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images in [-1, 1], (n, C, H, W)."""
        device = next(self.parameters()).device
        return self.inverse(torch.randn(n, *self.image_shape, device=device)).clamp(-1, 1)


class Generator(nn.Module):
    """The flow run generatively, z -> x in [-1, 1]: what export logs. Its forward returns one
    tensor, as MLflow's signature needs; the flow's own returns (z, log_det) for the loss."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.inverse(z).clamp(-1, 1)  # z: (B, C, H, W)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.flow.sample(n)


def dequantise(x: torch.Tensor, bin_width: float) -> torch.Tensor:
    """Uniform noise across each pixel's bin (x at its centre)."""
    return x + bin_width * (noise.rand(x.shape, device=x.device) - 0.5)


def bits_per_dim(z: torch.Tensor, log_det: torch.Tensor, bin_width: float) -> torch.Tensor:
    """Per image: -log2 P(x) / D, bounded by the dequantised density: (B,)."""
    dims = z[0].numel()
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
    nats = -(log_pz + log_det) / dims - math.log(bin_width)
    return nats / math.log(2)
