"""The flow's training step: one phase minimising the dequantised NLL in bits per dimension."""

from collections.abc import Mapping

import torch
from torch import nn

from gentrain.families import DataInfo, PipelineForm
from gentrain.families.flow.config import FlowConfig
from gentrain.families.flow.model import Flow, Generator, bits_per_dim, dequantise
from gentrain.families.flow.pipeline import flow_pipeline


class FlowStep:
    phases = ("flow",)
    image_shape: tuple[int, ...] = ()  # set by build
    bin_width = 0.0

    def build(self, config: FlowConfig, data: DataInfo) -> dict[str, nn.Module]:
        flow = Flow(config, data.shape)
        self.image_shape, self.bin_width = data.shape, flow.bin_width
        return {"flow": flow}

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert phase == "flow", phase
        return self.loss_of_parts(*models["flow"](self.dequantise(batch)))

    def dequantise(self, images: torch.Tensor) -> torch.Tensor:
        return dequantise(images, self.bin_width)

    def loss_of_parts(
        self, z: torch.Tensor, log_det: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = bits_per_dim(z.float(), log_det.float(), self.bin_width).mean()
        return loss, {"bits_per_dim": loss.detach()}

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        return flow_pipeline(models["flow"], prepare=self.dequantise, loss=self.loss_of_parts)

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        return models["flow"].sample(n)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> torch.Tensor:
        return self.sample(models, 64)

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        """Held-out bits/dim, one dequantisation draw per image."""
        flow = models["flow"]
        device = next(flow.parameters()).device
        total = 0.0
        for images in heldout.split(256):
            z, log_det = flow(dequantise(images.to(device), self.bin_width))
            total += bits_per_dim(z.float(), log_det.float(), self.bin_width).sum().item()
        return {"bits_per_dim": total / len(heldout)}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        return Generator(models["flow"]), torch.randn(2, *self.image_shape)
