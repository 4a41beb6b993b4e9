"""The flow as pipeline blocks: the logit transform, each checkerboard coupling, then each
(1x1 mix, channel coupling) pair at half resolution; (z, log_det) flows from block to block."""

import torch
from torch import nn

from gentrain.families import PipelineForm
from gentrain.families.flow.model import Flow, squeeze, unsqueeze


class Start(nn.Module):
    def __init__(self, flow: Flow):
        super().__init__()
        self.logit = flow.logit

    def forward(self, x: torch.Tensor):
        return self.logit(x)


class Full(nn.Module):
    def __init__(self, coupling: nn.Module, *, squeezes: bool):
        super().__init__()
        self.coupling, self.squeezes = coupling, squeezes

    def forward(self, z: torch.Tensor, log_det: torch.Tensor):
        z, ld = self.coupling(z)
        return (squeeze(z) if self.squeezes else z), log_det + ld


class Mixed(nn.Module):
    def __init__(self, mix: nn.Module, coupling: nn.Module, *, unsqueezes: bool):
        super().__init__()
        self.mix, self.coupling, self.unsqueezes = mix, coupling, unsqueezes

    def forward(self, z: torch.Tensor, log_det: torch.Tensor):
        z, ld_mix = self.mix(z)
        z, ld = self.coupling(z)
        return (unsqueeze(z) if self.unsqueezes else z), log_det + ld_mix + ld


def flow_pipeline(flow: Flow, *, prepare, loss) -> PipelineForm:
    """As Flow.forward: the last full coupling squeezes, the last mixed pair unsqueezes."""
    assert len(flow.full) and len(flow.mixes), "the flow splits between its couplings"
    last_full, last_mixed = len(flow.full) - 1, len(flow.mixes) - 1
    blocks = [
        Start(flow),
        *(Full(c, squeezes=i == last_full) for i, c in enumerate(flow.full)),
        *(
            Mixed(m, c, unsqueezes=i == last_mixed)
            for i, (m, c) in enumerate(zip(flow.mixes, flow.couplings, strict=True))
        ),
    ]

    def inputs(images: torch.Tensor):
        return (prepare(images),), images

    return PipelineForm(blocks=blocks, inputs=inputs, loss=lambda out, _target: loss(*out))
