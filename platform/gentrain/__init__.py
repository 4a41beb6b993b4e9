"""gentrain: distributed training orchestration for generative models."""

__version__ = "0.1.0"
