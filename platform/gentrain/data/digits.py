"""scikit-learn's bundled 8x8 digits (no download): a deterministic train / held-out split."""

from functools import cache
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


def load_digits(split: Literal["train", "heldout"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 1, 8, 8) scaled to [-1, 1], and int64 labels (N,)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    train_idx, heldout_idx = _split_indices(len(bunch.images))
    idx = train_idx if split == "train" else heldout_idx
    images = torch.from_numpy(bunch.images[idx].astype(np.float32))  # (N, 8, 8), values 0..16
    images = images.unsqueeze(1) / 8.0 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    labels = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return images, labels
