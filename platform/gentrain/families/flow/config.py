"""The flow family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class FlowConfig:
    hidden: int = 64  # width of each coupling's network
    checkerboard_couplings: int = 4  # at full resolution, alternating the mask's parity
    channel_couplings: int = 6  # after the squeeze, each behind an invertible 1x1 conv
    levels: int = 17  # grey levels of the data: sets the dequantisation bin
    logit_alpha: float = 0.05  # keeps the logit away from 0 and 1 (RealNVP)
