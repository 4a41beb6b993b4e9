"""VAE family: a convolutional VAE with a discretised-logistic likelihood and a beta-weighted KL."""

from gentrain.families import FamilySpec, register
from gentrain.families.vae.config import VAEConfig

FAMILY = register(
    FamilySpec(
        name="vae",
        modality="image",
        config_cls=VAEConfig,
        flavors={
            "debug": {"latent_dim": 4, "channels": 8, "dropout": 0.1},
            "small": {"latent_dim": 16, "channels": 32},
            "base": {"latent_dim": 64, "channels": 128, "dropout": 0.1},
        },
        eval_metrics=("fid", "is", "elbo"),
        default_source="builtin:digits",
        step="gentrain.families.vae.step:VAEStep",
    )
)
