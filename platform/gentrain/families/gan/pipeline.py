"""The GAN as pipeline blocks: the generator's layers, then the discriminator's, in both phases
(so both phases are cut in the same places). The discriminator phase makes its fakes without a
graph and carries the real images along until they join the fakes in front of D."""

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.families import PipelineForm
from gentrain.families.gan.model import Discriminator, Generator


class GeneratorLayer(nn.Module):
    """One generator layer; the first turns z (B, latent) into (B, latent, 1, 1), the last hands
    its images on (the generator phase) or joins them behind the real ones (the D phase)."""

    def __init__(self, layer: nn.Module, *, first: bool, last: bool, for_d: bool):
        super().__init__()
        self.layer, self.first, self.last, self.for_d = layer, first, last, for_d

    def forward(self, h: torch.Tensor, *real: torch.Tensor):
        if self.first:
            h = h[:, :, None, None]
        with torch.set_grad_enabled(not self.for_d and torch.is_grad_enabled()):
            h = self.layer(h)
        if not self.for_d:
            return h
        return torch.cat([real[0], h]) if self.last else (h, *real)


class DiscriminatorLayer(nn.Module):
    def __init__(self, layer: nn.Module, *, last: bool):
        super().__init__()
        self.layer, self.last = layer, last

    def forward(self, h: torch.Tensor):
        h = self.layer(h)
        return h.flatten() if self.last else h


def gan_pipeline(
    generator: Generator, discriminator: Discriminator, *, phase: str, draw_latents
) -> PipelineForm:
    for_d = phase == "discriminator"
    g_layers, d_layers = list(generator.net), list(discriminator.net)
    blocks = [
        GeneratorLayer(layer, first=i == 0, last=i == len(g_layers) - 1, for_d=for_d)
        for i, layer in enumerate(g_layers)
    ] + [DiscriminatorLayer(layer, last=i == len(d_layers) - 1) for i, layer in enumerate(d_layers)]

    def inputs(real: torch.Tensor):
        z = draw_latents(real)
        return ((z, real) if for_d else (z,)), real

    def loss(logits: torch.Tensor, _target: torch.Tensor):
        if for_d:  # real logits first, as the D phase of GANStep.loss
            real_logits, fake_logits = logits.chunk(2)
            value = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            return value, {"loss_d": value.detach()}
        value = F.softplus(-logits).mean()
        return value, {"loss_g": value.detach()}

    return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)
