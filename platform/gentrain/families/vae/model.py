"""A convolutional VAE for square images whose side is a power of two >= 4.

The decoder models each pixel with a discretised logistic: the data are K grey levels evenly spaced
in [-1, 1] (K = 17 for the digits), so p(x | z) is the logistic mass of x's bin, its two outermost
bins stretched to -inf and +inf. The ELBO is then a lower bound on the log-probability of the
discrete image, in nats, comparable with a flow's bits/dim.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from gentrain import noise
from gentrain.families.vae.config import VAEConfig


def _levels(side: int) -> int:
    """Resolution halvings from `side` down to the 4x4 bottleneck."""
    assert side >= 4 and side & (side - 1) == 0, f"image side must be a power of two >= 4: {side}"
    return int(math.log2(side)) - 2


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, side, _ = image_shape
        width = config.channels
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1), nn.SiLU()]
        for _ in range(_levels(side)):  # each halves H and W, doubles the width
            layers += [
                nn.Conv2d(width, width, 3, 1, 1),
                nn.SiLU(),
                nn.Dropout(config.dropout),
                nn.Conv2d(width, width * 2, 4, 2, 1),
                nn.SiLU(),
            ]
            width *= 2
        self.net = nn.Sequential(*layers, nn.Flatten())  # (B, W * 4 * 4)
        self.to_stats = nn.Linear(width * 16, 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.net(x)).chunk(2, dim=1)  # (B, latent_dim) each
        return mu, logvar


class Decoder(nn.Module):
    """z -> the mean image in [-1, 1]; what export logs, with `sample(n)`."""

    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, side, _ = image_shape
        levels = _levels(side)
        self.latent_dim = config.latent_dim
        width = config.channels * 2**levels
        self.from_z = nn.Sequential(nn.Linear(config.latent_dim, width * 16), nn.SiLU())
        self.bottom = (width, 4, 4)
        layers: list[nn.Module] = []
        for _ in range(levels):  # each doubles H and W, halves the width
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
                nn.SiLU(),
                nn.Dropout(config.dropout),
                nn.Conv2d(width // 2, width // 2, 3, 1, 1),
                nn.SiLU(),
            ]
            width //= 2
        layers += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]  # (B, C, H, W) in [-1, 1]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.from_z(z).view(-1, *self.bottom))  # z: (B, latent_dim)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images in [-1, 1], (n, C, H, W): the decoded means of z ~ N(0, I)."""
        device = next(self.parameters()).device
        return self(torch.randn(n, self.latent_dim, device=device))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.bin_width = 2.0 / (config.levels - 1)
        self.encoder = Encoder(config, image_shape)
        self.decoder = Decoder(config, image_shape)
        # The likelihood's per-pixel log-scale, learned but independent of z.
        self.log_scale = nn.Parameter(torch.full(image_shape, -2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: -log p(x | z) for one z ~ q(z | x), in nats; and q's mu, logvar.
        Everything the loss needs comes out of forward, so DDP sees every parameter used."""
        mu, logvar = self.encoder(x)  # (B, latent_dim) each
        z = (
            mu + noise.randn(mu.shape, device=mu.device) * (0.5 * logvar).exp()
        )  # reparameterisation
        mean = self.decoder(z)  # (B, C, H, W)
        log_px = discretised_logistic_log_prob(x, mean, self.log_scale, self.bin_width)
        return -log_px.flatten(1).sum(1), mu, logvar  # (B,), (B, latent_dim) x 2

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoded mean of q's mean: (B, C, H, W) in [-1, 1]."""
        return self.decoder(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decoder.sample(n)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per row, in nats: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def discretised_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bin_width: float
) -> torch.Tensor:
    """log P(x) per pixel, P the mass of x's bin (width `bin_width`) under a logistic(mean, scale);
    the lowest bin (x = -1) reaches down to -inf and the highest (x = 1) up to +inf."""
    inv_scale = (-log_scale.clamp(-7.0, 5.0)).exp()  # the clamp keeps every branch finite
    centred = (x - mean) * inv_scale
    half = 0.5 * bin_width * inv_scale
    lowest = F.logsigmoid(centred + half)  # log CDF(x + bin / 2)
    highest = F.logsigmoid(-(centred - half))  # log (1 - CDF(x - bin / 2))
    # Interior bins, by the logistic's symmetry evaluated on its lower tail, where
    # log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + log(1 - exp(logsigmoid(b) - logsigmoid(a)))
    # keeps its precision however far x lies from the mean.
    upper, lower = -centred.abs() + half, -centred.abs() - half
    gap = F.logsigmoid(lower) - F.logsigmoid(upper)  # < 0
    interior = F.logsigmoid(upper) + torch.log(-torch.expm1(gap).clamp(max=-1e-12))
    edge = bin_width / 2
    return torch.where(x < -1 + edge, lowest, torch.where(x > 1 - edge, highest, interior))
