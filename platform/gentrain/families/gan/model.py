"""DCGAN: a generator and a discriminator for square images whose side is a power of two >= 4."""

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gentrain.families.gan.config import GANConfig


def _levels(side: int) -> int:
    """Resolution doublings from the 4x4 base to `side`."""
    assert side >= 4 and side & (side - 1) == 0, f"image side must be a power of two >= 4: {side}"
    return int(math.log2(side)) - 2


class Generator(nn.Module):
    def __init__(self, config: GANConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, side, _ = image_shape
        levels = _levels(side)
        self.latent_dim = config.latent_dim
        width = config.g_channels * 2**levels
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, width, 4, 1, 0, bias=False),  # (B, W, 4, 4)
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        for _ in range(levels):  # each doubles H and W, halves the width
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]  # (B, C, H, W) in [-1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # z: (B, latent_dim)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images in [-1, 1], (n, C, H, W)."""
        device = next(self.parameters()).device
        return self(torch.randn(n, self.latent_dim, device=device))


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, side, _ = image_shape
        levels = _levels(side)
        norm = spectral_norm if config.spectral_norm else (lambda layer: layer)
        width = config.d_channels
        layers: list[nn.Module] = [norm(nn.Conv2d(channels, width, 3, 1, 1)), nn.LeakyReLU(0.2)]
        for _ in range(levels):  # each halves H and W, doubles the width
            layers.append(norm(nn.Conv2d(width, width * 2, 4, 2, 1, bias=config.spectral_norm)))
            if not config.spectral_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2))
            width *= 2
        layers.append(norm(nn.Conv2d(width, 1, 4, 1, 0)))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten()  # (B,) real-vs-fake logits
