"""GAN family: DCGAN with a non-saturating loss and optional spectral norm on the discriminator."""

from gentrain.families import FamilySpec, register
from gentrain.families.gan.config import GANConfig

FAMILY = register(
    FamilySpec(
        name="gan",
        modality="image",
        config_cls=GANConfig,
        flavors={
            "debug": {"latent_dim": 8, "g_channels": 8, "d_channels": 8, "spectral_norm": True},
            "small": {"latent_dim": 32, "g_channels": 64, "d_channels": 64, "spectral_norm": True},
            "base": {
                "latent_dim": 128,
                "g_channels": 128,
                "d_channels": 128,
                "spectral_norm": True,
            },
        },
        eval_metrics=("fid", "is"),
        default_source="builtin:digits",
        step="gentrain.families.gan.step:GANStep",
    )
)
