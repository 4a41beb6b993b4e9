"""The DDPM's training step: one phase minimising the noise-prediction MSE (Ho et al.'s simple
loss); sampling and preview run DDIM with the EMA weights."""

from collections.abc import Mapping

import torch
from torch import nn

from gentrain.families import DataInfo, PipelineForm
from gentrain.families.diffusion.config import DiffusionConfig
from gentrain.families.diffusion.model import Diffusion, Generator
from gentrain.families.diffusion.pipeline import diffusion_pipeline


class DiffusionStep:
    phases = ("diffusion",)
    image_shape: tuple[int, ...] = ()  # set by build

    def build(self, config: DiffusionConfig, data: DataInfo) -> dict[str, nn.Module]:
        self.image_shape = data.shape
        return {"diffusion": Diffusion(config, data.shape)}

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert phase == "diffusion", phase
        return models["diffusion"](batch).mean(), {}  # the loss is the MSE: no other terms

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        return diffusion_pipeline(models["diffusion"])

    def after_update(self, models: Mapping[str, nn.Module], *, phase: str) -> None:
        """The EMA follows each optimizer step of the UNet."""
        diffusion = models["diffusion"]
        if diffusion.ema is not None:
            diffusion.ema.update(diffusion.unet)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models["diffusion"].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> torch.Tensor:
        return self.sample(models, 64)

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        return {}  # FID and IS come from the platform's image evaluation

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        return Generator(models["diffusion"]), torch.randn(2, *self.image_shape)
