"""Diffusion family: a DDPM with a small UNet, linear or cosine noise schedule, an EMA of the
weights, and DDIM sampling."""

from gentrain.families import FamilySpec, register
from gentrain.families.diffusion.config import DiffusionConfig

FAMILY = register(
    FamilySpec(
        name="diffusion",
        modality="image",
        config_cls=DiffusionConfig,
        flavors={
            "debug": {
                "channels": 8,
                "blocks": 1,
                "norm_groups": 4,
                "timesteps": 100,
                "sample_steps": 10,
                "ema_decay": 0.9,
            },
            "small": {"channels": 32, "blocks": 2, "timesteps": 1000, "sample_steps": 50},
            "base": {
                "channels": 128,
                "levels": 3,
                "blocks": 2,
                "norm_groups": 32,
                "dropout": 0.1,
                "schedule": "cosine",
                "timesteps": 1000,
                "sample_steps": 50,
            },
        },
        eval_metrics=("fid", "is"),
        default_source="builtin:digits",
        step="gentrain.families.diffusion.step:DiffusionStep",
    )
)
