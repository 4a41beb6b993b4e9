"""The vae family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 16
    channels: int = 32  # width at full resolution; doubles per level down
    beta: float = 1.0  # weight of the KL term in the loss (the logged ELBO always uses 1)
    dropout: float = 0.0
    levels: int = 17  # grey levels of the data: the discretised likelihood's bins
