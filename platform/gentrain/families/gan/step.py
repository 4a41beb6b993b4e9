"""The GAN's training step: non-saturating loss, discriminator phase then generator phase."""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gentrain import noise
from gentrain.families import DataInfo, PipelineForm
from gentrain.families.gan.config import GANConfig
from gentrain.families.gan.model import Discriminator, Generator
from gentrain.families.gan.pipeline import gan_pipeline


class GANStep:
    phases = ("discriminator", "generator")
    latent_dim = 0  # set by build

    def build(self, config: GANConfig, data: DataInfo) -> dict[str, nn.Module]:
        self.latent_dim = config.latent_dim
        return {
            "discriminator": Discriminator(config, data.shape),
            "generator": Generator(config, data.shape),
        }

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        generator, discriminator = models["generator"], models["discriminator"]
        z = self.draw_latents(batch)
        if phase == "discriminator":
            # Fakes made without a graph: this phase updates only D, and a DDP-wrapped G must not
            # expect a backward pass. Real and fake go through D in one batch (one DDP forward).
            with torch.no_grad():
                fake = generator(z)
            logits = discriminator(torch.cat([batch, fake]))  # (2B,)
            real_logits, fake_logits = logits.chunk(2)
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            return loss, {"loss_d": loss.detach()}
        assert phase == "generator", phase
        loss = F.softplus(-discriminator(generator(z))).mean()  # non-saturating: -log D(G(z))
        return loss, {"loss_g": loss.detach()}

    def draw_latents(self, batch: torch.Tensor) -> torch.Tensor:
        return noise.randn((batch.shape[0], self.latent_dim), device=batch.device)

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        return gan_pipeline(
            models["generator"],
            models["discriminator"],
            phase=phase,
            draw_latents=self.draw_latents,
        )

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models["generator"].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> torch.Tensor:
        return self.sample(models, 64)

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        return {}  # FID and IS come from the platform's image evaluation

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        return models["generator"], torch.randn(2, self.latent_dim)
