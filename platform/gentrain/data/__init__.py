"""Datasets named by `data.source`, their deterministic sharding across workers, augmentations."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gentrain.families import DataInfo


@dataclass(frozen=True)
class Dataset:
    train: torch.Tensor  # (N, ...) examples
    heldout: torch.Tensor  # (M, ...) for evaluation only

    @property
    def info(self) -> DataInfo:
        return DataInfo(shape=tuple(self.train.shape[1:]))


def load_dataset(source: str) -> Dataset:
    """`source` is validated by the spec; built-in sets ship with a package, never downloaded."""
    assert source == "builtin:digits", source
    from gentrain.data.digits import load_digits

    train, _ = load_digits("train")
    heldout, _ = load_digits("heldout")
    # DCGAN sides are powers of two >= 4; 8x8 already is one.
    return Dataset(train=train, heldout=heldout)


class ShardedBatches:
    """The batch each worker trains on at each step, as a pure function of (seed, step, rank).

    Every epoch is a seeded permutation split evenly across workers (each sees its own part), so a
    resumed run sees exactly the batches an uninterrupted one would have seen.
    """

    def __init__(
        self, examples: torch.Tensor, *, batch_size: int, rank: int, world: int, seed: int
    ):
        self.examples = examples
        self.batch_size = batch_size  # per worker
        self.rank, self.world, self.seed = rank, world, seed
        self.per_epoch = len(examples) // (batch_size * world)
        assert self.per_epoch > 0, (
            f"{len(examples)} examples are fewer than one global batch of {batch_size * world}"
        )

    def at(self, step: int) -> torch.Tensor:
        """The batch of the 1-based optimizer `step`."""
        epoch, index = divmod(step - 1, self.per_epoch)
        order = torch.randperm(
            len(self.examples),
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )
        shard = order[self.rank :: self.world]
        return self.examples[shard[index * self.batch_size : (index + 1) * self.batch_size]]


def augment(images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Random augmentations of a batch (B, C, H, W) in [-1, 1], drawn from torch's global RNG."""
    for name in names:
        if name == "hflip":
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        elif name == "random_crop":
            images = _random_crop(images, pad=max(1, images.shape[-1] // 8))
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
