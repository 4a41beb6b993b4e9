"""The gan family's hyperparameters (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class GANConfig:
    latent_dim: int = 32
    g_channels: int = 64  # width of the generator's last hidden layer; doubles per level up
    d_channels: int = 64  # width of the discriminator's first layer; doubles per level down
    spectral_norm: bool = False  # on every discriminator layer, in place of its BatchNorm
