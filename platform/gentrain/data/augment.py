"""Random augmentations of image batches (which examples a batch holds: data.stream)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Random augmentations of a batch (B, C, H, W) in [-1, 1], drawn from torch's global RNG."""
    for name in names:
        if name == "hflip":
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        elif name == "random_crop":
            images = _random_crop(images, pad=max(1, images.shape[-1] // 8))
        elif name == "color_jitter":
            images = _color_jitter(images)
        elif name == "noise":
            images = (images + 0.05 * torch.randn_like(images)).clamp(-1, 1)
        else:
            raise AssertionError(f"unknown augmentation {name}")
    return images


def _random_crop(images: torch.Tensor, *, pad: int) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflect padding, then a crop back to size)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch,)).tolist()
    dx = torch.randint(0, 2 * pad + 1, (batch,)).tolist()
    return torch.stack(
        [
            padded[i, :, y : y + height, x : x + width]
            for i, (y, x) in enumerate(zip(dy, dx, strict=True))
        ]
    )


def _color_jitter(images: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Random brightness, contrast and (RGB only) saturation per image, each by up to `strength`."""
    batch = images.shape[0]

    def factor() -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(batch, 1, 1, 1, device=images.device) - 1)

    images = (images + 1) * factor() - 1  # brightness: scale intensities in [0, 2]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * factor() + mean  # contrast
    if images.shape[1] == 3:
        gray = images.mean(dim=1, keepdim=True)
        images = (images - gray) * factor() + gray  # saturation
    return images.clamp(-1, 1)
