"""The UNet as pipeline blocks: the stem, each level down, the middle, each level up, the head.
Between blocks travel the features, the time embedding and the skips not yet taken, so a cut
anywhere carries the skip connections across it."""

import torch
from torch import nn

from gentrain.families import PipelineForm
from gentrain.families.diffusion.model import Diffusion, UNet, timestep_embedding


class Start(nn.Module):
    def __init__(self, unet: UNet):
        super().__init__()
        self.time_mlp, self.stem, self.emb_in = unet.time_mlp, unet.stem, unet.emb_in

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        return self.stem(x), self.time_mlp(timestep_embedding(t, self.emb_in))


class Down(nn.Module):
    def __init__(self, blocks: nn.ModuleList, downsample: nn.Module):
        super().__init__()
        self.blocks, self.downsample = blocks, downsample

    def forward(self, h: torch.Tensor, emb: torch.Tensor, *skips: torch.Tensor):
        for block in self.blocks:
            h = block(h, emb)
        return self.downsample(h), emb, *skips, h


class Middle(nn.Module):
    def __init__(self, blocks: nn.ModuleList):
        super().__init__()
        self.blocks = blocks

    def forward(self, h: torch.Tensor, emb: torch.Tensor, *skips: torch.Tensor):
        for block in self.blocks:
            h = block(h, emb)
        return h, emb, *skips


class Up(nn.Module):
    def __init__(self, upsample: nn.Module, blocks: nn.ModuleList):
        super().__init__()
        self.upsample, self.blocks = upsample, blocks

    def forward(self, h: torch.Tensor, emb: torch.Tensor, *skips: torch.Tensor):
        h = torch.cat([self.upsample(h), skips[-1]], dim=1)  # upsampled, then its skip
        for block in self.blocks:
            h = block(h, emb)
        return h, emb, *skips[:-1]


class Head(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, h: torch.Tensor, emb: torch.Tensor):
        return self.head(h)


def diffusion_pipeline(diffusion: Diffusion) -> PipelineForm:
    unet = diffusion.unet
    blocks = [
        Start(unet),
        *(Down(b, d) for b, d in zip(unet.down, unet.downsample, strict=True)),
        Middle(unet.middle),
        *(Up(u, b) for u, b in zip(reversed(unet.upsample), reversed(unet.up), strict=True)),
        Head(unet.head),
    ]

    def inputs(x0: torch.Tensor):
        t, eps = diffusion.draw(x0)
        return (diffusion.schedule.q_sample(x0, t, eps), t), eps

    def loss(predicted: torch.Tensor, eps: torch.Tensor):
        return (predicted.float() - eps).pow(2).flatten(1).mean(1).mean(), {}

    return PipelineForm(blocks=blocks, inputs=inputs, loss=loss)
