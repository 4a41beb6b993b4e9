"""Rows read from a shard -> examples, and examples -> a batch tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gentrain.errors import GentrainError


def split_rows(rows: Sequence, names: Sequence[str], heldout: set[int]) -> tuple[list, list]:
    """([(name, row)] trained on, [(name, row)] held out)."""
    named = list(zip(names, rows, strict=True))
    return [x for i, x in enumerate(named) if i not in heldout], [named[i] for i in sorted(heldout)]


class ImageExamples:
    """Images stay encoded (or, built-in digits, arrays) until a worker batches its own rows:
    each worker decodes only what it trains on."""

    def __init__(self, *, channels: int, size: int | None):
        self.channels, self.size = channels, size
        self.first: tuple[str, tuple[int, ...]] | None = None  # what every image must match

    def expect(self, name: str, shape: tuple[int, ...]) -> None:
        """Without data.image_size, every image must be the size of the first (`name`)."""
        self.first = (name, shape)

    def from_rows(self, named_rows: list[tuple[str, object]]) -> list:
        return named_rows

    def arrays(self, items: Sequence) -> np.ndarray:
        """Decoded: uint8 pixels (N, C, H, W), or the built-in digits' float arrays."""
        names, rows = [name for name, _ in items], [row for _, row in items]
        if rows and isinstance(rows[0], np.ndarray):
            return np.stack(rows)
        from gentrain.data.images import decode_pixels

        pixels = decode_pixels(rows, names=names, channels=self.channels, size=self.size)
        if pixels is None:
            return np.empty((0, self.channels, self.size or 0, self.size or 0), dtype=np.uint8)
        if self.first and pixels.shape[1:] != self.first[1]:
            (_, height, width), (_, first_height, first_width) = pixels.shape[1:], self.first[1]
            raise GentrainError(
                f"{names[0]} is {width}x{height} but {self.first[0]} is {first_width}x"
                f"{first_height}: set data.image_size to resize all images to one size"
            )
        return pixels

    def batch(self, items: Sequence) -> torch.Tensor:
        return as_tensor(self.arrays(items))


class TextExamples:
    """A shard's records, tokenized one after another and cut into windows of seq_len tokens."""

    def __init__(self, tokenizer, *, seq_len: int):
        self.tokenizer, self.seq_len = tokenizer, seq_len
        self.dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32  # ids held compact

    def from_rows(self, named_rows: list[tuple[str, str]]) -> np.ndarray:
        from gentrain.data.text import windows

        ids = self.tokenizer.encode_rows([row for _, row in named_rows])
        return windows(ids, length=self.seq_len, dtype=self.dtype)

    def arrays(self, items: np.ndarray) -> np.ndarray:
        return np.asarray(items, dtype=self.dtype).reshape(-1, self.seq_len)

    def batch(self, items: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.arrays(items).astype(np.int64))


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """Images as training takes them: float in [-1, 1] (uint8 pixels are scaled)."""
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32)) / 127.5 - 1.0
    return torch.from_numpy(np.asarray(images, dtype=np.float32))


def concat(parts: list) -> list | np.ndarray:
    """Examples of several shards as one sequence (lists of encoded images, or arrays)."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return []
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


def take(items: list | np.ndarray, order: np.ndarray) -> list | np.ndarray:
    if isinstance(items, np.ndarray):
        return items[order]
    return [items[i] for i in order]
