"""The bert family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class BERTConfig:
    layers: int = 4
    dim: int = 128
    heads: int = 4
    dropout: float = 0.1
    norm: str = "pre"  # "post": LayerNorm after each residual add (BERT); "pre": before each branch
    mask_prob: float = 0.15  # share of positions the training loss (and evaluation) predicts
    sample_rounds: int = 16  # sampling unmasks a window in this many rounds

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.overrides.norm: expected 'pre' or 'post', got {self.norm!r}")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"model.overrides.mask_prob: expected in (0, 1), got {self.mask_prob}")
