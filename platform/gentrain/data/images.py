"""User images: encoded files (PNG/JPEG) decoded into (N, C, H, W) pixels."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gentrain.errors import GentrainError

if TYPE_CHECKING:
    import torch


def decode_images(
    encoded: Sequence[bytes], *, names: Sequence[str], channels: int, size: int | None
) -> torch.Tensor:
    """Decode, convert to `channels` (1: grayscale, 3: RGB), centre-crop to a square and resize to
    `size` (None: keep each image as it is; then all must share one size): float (N, C, H, W)
    in [-1, 1]."""
    pixels = decode_pixels(encoded, names=names, channels=channels, size=size)
    import torch  # after every image is read: a bad one is refused before torch loads

    if pixels is None:  # the caller says how many it needs
        return torch.empty(0, channels, size or 0, size or 0)
    return torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1.0


def decode_pixels(
    encoded: Sequence[bytes], *, names: Sequence[str], channels: int, size: int | None
) -> np.ndarray | None:
    """decode_images' pixels as uint8 (N, C, H, W), or None for no images."""
    from PIL import Image, UnidentifiedImageError

    arrays, first_size = [], None
    for data, name in zip(encoded, names, strict=True):
        try:
            image = Image.open(io.BytesIO(data))
            image = image.convert("L" if channels == 1 else "RGB")
        except UnidentifiedImageError:
            raise GentrainError(f"{name}: not a readable image (unknown format)") from None
        except OSError as err:
            raise GentrainError(f"{name}: not a readable image ({err})") from None
        if size is not None:
            image = _square(image).resize((size, size), Image.Resampling.BICUBIC)
        first_size = first_size or image.size
        if image.size != first_size:
            raise GentrainError(
                f"{name} is {_size(image.size)} but {names[0]} is {_size(first_size)}: "
                "set data.image_size to resize all images to one size"
            )
        array = np.asarray(image, dtype=np.uint8)
        arrays.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
    return np.stack(arrays) if arrays else None


def _square(image):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"  # width x height
