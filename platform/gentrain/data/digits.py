"""scikit-learn's bundled 8x8 digits (no download): a deterministic train / held-out split."""

import gzip
import importlib.util
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@cache
def _split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_heldout = int(round(n * HELDOUT_FRACTION))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


@cache
def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The file sklearn.datasets.load_digits reads, read directly: importing scikit-learn costs
    every training worker seconds."""
    package = importlib.util.find_spec("sklearn")  # locates it without importing it
    csv = Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt") as rows:
        data = np.loadtxt(rows, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def load_digits(split: Literal["train", "heldout"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 1, 8, 8) scaled to [-1, 1], and int64 labels (N,)."""
    all_images, all_labels = _bundled_digits()
    train_idx, heldout_idx = _split_indices(len(all_images))
    idx = train_idx if split == "train" else heldout_idx
    images = torch.from_numpy(all_images[idx].astype(np.float32))  # (N, 8, 8), values 0..16
    images = images.unsqueeze(1) / 8.0 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    labels = torch.from_numpy(all_labels[idx])
    return images, labels


def all_digits() -> np.ndarray:
    """All 1797 images as float32 (N, 1, 8, 8) in [-1, 1], in the file's order (gentrain.data's
    source: its own train / held-out rule applies)."""
    images, _ = _bundled_digits()
    return (images.astype(np.float32) / 8.0 - 1.0)[:, None]
