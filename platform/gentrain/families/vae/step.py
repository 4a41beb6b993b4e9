"""The VAE's training step: one phase minimising the negative ELBO (beta-weighted KL) per image."""

from collections.abc import Mapping

import torch
from torch import nn

from gentrain.families import DataInfo, PipelineForm
from gentrain.families.vae.config import VAEConfig
from gentrain.families.vae.model import VAE, kl_to_standard_normal
from gentrain.families.vae.pipeline import vae_pipeline


class VAEStep:
    phases = ("vae",)
    beta = 1.0  # set by build
    latent_dim = 0

    def build(self, config: VAEConfig, data: DataInfo) -> dict[str, nn.Module]:
        self.beta, self.latent_dim = config.beta, config.latent_dim
        return {"vae": VAE(config, data.shape)}

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert phase == "vae", phase
        return self.loss_of_parts(*models["vae"](batch))

    def loss_of_parts(
        self, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and terms of VAE.forward's outputs: (B,), (B, latent_dim) x 2."""
        kl = kl_to_standard_normal(mu.float(), logvar.float())  # (B,)
        recon = recon.float()
        loss = (recon + self.beta * kl).mean()
        terms = {"elbo": -(recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}
        return loss, {name: value.detach() for name, value in terms.items()}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        return vae_pipeline(models["vae"], self.loss_of_parts)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models["vae"].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> torch.Tensor:
        """32 samples (4 rows of the 8-wide grid), then 2 x (a row of 8 held-out images above a
        row of their reconstructions)."""
        vae = models["vae"]
        device = next(vae.parameters()).device
        originals = heldout[:16].to(device)
        recons = vae.reconstruct(originals)
        pairs = [part for i in (0, 8) for part in (originals[i : i + 8], recons[i : i + 8])]
        return torch.cat([self.sample(models, 32), *pairs])

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        """The held-out ELBO in nats per image (one z per image), beta = 1."""
        vae = models["vae"]
        device = next(vae.parameters()).device
        total = 0.0
        for images in heldout.split(256):
            recon, mu, logvar = vae(images.to(device))
            total += (recon + kl_to_standard_normal(mu, logvar)).float().sum().item()
        return {"elbo": -total / len(heldout)}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        # The decoder: its forward returns one tensor (as MLflow's signature needs) and it has
        # sample(n); the VAE's own forward returns the loss's parts.
        return models["vae"].decoder, torch.randn(2, self.latent_dim)
