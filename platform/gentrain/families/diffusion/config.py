"""The diffusion family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DiffusionConfig:
    channels: int = 64  # width at full resolution; doubles per level down
    levels: int = 2  # resolutions; fewer where halving would go below 4 pixels
    blocks: int = 2  # residual blocks per level
    norm_groups: int = 8  # GroupNorm groups; must divide `channels`
    dropout: float = 0.0  # in each residual block
    timesteps: int = 1000
    schedule: str = "linear"  # "linear" (DDPM) or "cosine" (Nichol & Dhariwal)
    sample_steps: int = 50  # DDIM steps per sample
    ema_decay: float = 0.999  # 0 samples with the trained weights themselves

    def __post_init__(self) -> None:
        # A ValueError: the spec's validation turns it into a one-line error.
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(
                f"model.overrides.schedule: '{self.schedule}'; allowed: linear, cosine"
            )
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(
                f"model.overrides.sample_steps: {self.sample_steps}; must be in 1..timesteps "
                f"({self.timesteps})"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"model.overrides.ema_decay: {self.ema_decay}; must be in [0, 1)")
        if self.channels % self.norm_groups:
            raise ValueError(
                f"model.overrides.norm_groups: {self.norm_groups} does not divide channels "
                f"({self.channels})"
            )
