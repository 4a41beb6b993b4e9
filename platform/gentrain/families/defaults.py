"""What a family's step leaves out, filled in: a user's step needs only `phases`, `build`, `loss`
and `sample`.

- `preview`: 16 samples (images: a grid; texts: 4 decoded samples);
- `evaluate`: no metrics of the family's own (image families still get FID / IS from `sample`);
- `export`: the first phase's network, with an example input of two all-zero examples;
- `after_update`: nothing runs after an update;
- `pipeline`: none; train.strategy: pipeline is refused for such a family.
"""

import types
from collections.abc import Mapping

import torch
from torch import nn

from gentrain.families import DataInfo, FamilyStep


def with_defaults(step: FamilyStep, *, modality: str) -> FamilyStep:
    """`step`, given the defaults above for the optional methods its class does not define."""
    build = step.build
    data: list[DataInfo] = []  # what build saw: the defaults need the data's shape

    def recording_build(config, info: DataInfo) -> dict[str, nn.Module]:
        data[:] = [info]
        return build(config, info)

    def preview(self, models: Mapping[str, nn.Module], heldout: torch.Tensor):
        if modality == "image":
            return self.sample(models, 16)
        return [f"[sample]\n{data[0].decode(ids.tolist())}" for ids in self.sample(models, 4)]

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict:
        return {}

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        module = models[self.phases[0]]
        dtype = torch.float32 if modality == "image" else torch.int64
        device = next(module.parameters()).device
        return module, torch.zeros((2, *data[0].shape), dtype=dtype, device=device)

    step.build = recording_build
    for name, default in (("preview", preview), ("evaluate", evaluate), ("export", export)):
        if not callable(getattr(type(step), name, None)):
            setattr(step, name, types.MethodType(default, step))
    return step
