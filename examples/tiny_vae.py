"""A model family of your own, trained by gentrain: a small MLP VAE on images (README, "Bring your
own model"). A spec names it `model.family: tiny_vae:FAMILY`."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gentrain import noise
from gentrain.families import FamilySpec


@dataclass(frozen=True)
class TinyVAEConfig:  # the settings a flavor or model.overrides may set
    hidden: int = 64
    latent: int = 8


class TinyVAE(nn.Module):
    def __init__(self, config: TinyVAEConfig, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.latent = shape, config.latent
        pixels = math.prod(shape)
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, 2 * config.latent),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(config.latent, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, pixels), nn.Tanh(),
        )  # fmt: skip

    def forward(self, images: torch.Tensor):  # (B, C, H, W) in [-1, 1]
        mean, logvar = self.encoder(images).chunk(2, dim=1)  # (B, latent) each
        # gentrain.noise: the same noise for an example at any number of workers
        z = mean + (0.5 * logvar).exp() * noise.randn(mean.shape, device=mean.device)
        return self.decode(z), mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, C, H, W)
        return self.decoder(z).view(-1, *self.shape)


class TinyVAEStep:
    phases = ("vae",)  # the networks updated each step, each by its own optimizer

    def build(self, config: TinyVAEConfig, data) -> dict[str, nn.Module]:
        return {"vae": TinyVAE(config, data.shape)}  # data.shape: one example's (C, H, W)

    def loss(self, models, batch: torch.Tensor, *, phase: str):
        recon, mean, logvar = models["vae"](batch)
        error = F.mse_loss(recon, batch, reduction="none").flatten(1).sum(1)  # (B,)
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1)  # (B,)
        terms = {"recon": error.mean().detach(), "kl": kl.mean().detach()}  # logged as metrics
        return (error + kl).mean(), terms

    def sample(self, models, n: int) -> torch.Tensor:  # n images in [-1, 1]
        vae = models["vae"]
        z = torch.randn(n, vae.latent, device=next(vae.parameters()).device)
        return vae.decode(z)


FAMILY = FamilySpec(
    name="tiny_vae",
    modality="image",
    config_cls=TinyVAEConfig,
    flavors={"debug": {"hidden": 32, "latent": 4}, "small": {"hidden": 128, "latent": 8}},
    step=TinyVAEStep,
    eval_metrics=("fid", "is"),  # computed by gentrain from sample()
)
