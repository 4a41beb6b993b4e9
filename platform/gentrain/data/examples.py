"""Rows read from a shard -> examples, and examples -> a batch tensor. Which rows are held out is
decided row by row, from the shard's name and the row's place in it: no split needs the whole
dataset, and every process decides alike."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from gentrain.data.sources import Shard
from gentrain.errors import GentrainError

HELDOUT_ONE_IN = 10  # a tenth of the rows, spread over every shard


def heldout_rows(shard: Shard, count: int, *, first: bool) -> set[int]:
    """Which of a shard's `count` rows are held out: those whose (shard, row) hashes to one in
    HELDOUT_ONE_IN; in the source's first shard at least one (its last row), so that small
    data has something to evaluate on."""
    chosen = {
        i for i in range(count) if zlib.crc32(f"{shard.id}#{i}".encode()) % HELDOUT_ONE_IN == 0
    }
    return chosen or ({count - 1} if first and count > 1 else set())


def split_rows(
    shard: Shard, rows: Sequence, names: Sequence[str], *, first: bool
) -> tuple[list, list]:
    """([(name, row)] trained on, [(name, row)] held out) of a shard."""
    heldout = heldout_rows(shard, len(rows), first=first)
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

    def batch(self, items: Sequence) -> torch.Tensor:
        names, rows = [name for name, _ in items], [row for _, row in items]
        if rows and isinstance(rows[0], np.ndarray):
            return torch.from_numpy(np.stack(rows))
        from gentrain.data.images import decode_images

        images = decode_images(rows, names=names, channels=self.channels, size=self.size)
        if self.first and len(images) and images.shape[1:] != self.first[1]:
            (_, height, width), (_, first_height, first_width) = images.shape[1:], self.first[1]
            raise GentrainError(
                f"{names[0]} is {width}x{height} but {self.first[0]} is {first_width}x"
                f"{first_height}: set data.image_size to resize all images to one size"
            )
        return images


class TextExamples:
    """A shard's records, tokenized one after another and cut into windows of seq_len tokens."""

    def __init__(self, tokenizer, *, seq_len: int):
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def from_rows(self, named_rows: list[tuple[str, str]]) -> np.ndarray:
        from gentrain.data.text import windows

        ids = [i for _, row in named_rows for i in self.tokenizer.encode(row)]
        return windows(ids, length=self.seq_len)

    def batch(self, items: Sequence) -> torch.Tensor:
        return torch.from_numpy(np.asarray(items, dtype=np.int64).reshape(-1, self.seq_len))


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
