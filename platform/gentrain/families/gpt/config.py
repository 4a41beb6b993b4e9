"""The gpt family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GPTConfig:
    layers: int = 4
    dim: int = 128
    heads: int = 4
    dropout: float = 0.1
    temperature: float = 1.0  # sampling: logits are divided by it
    top_k: int = 0  # sampling: draw from the k likeliest tokens only; 0 = from all
