"""Flow family: a RealNVP-style normalizing flow trained by exact, dequantised likelihood."""

from gentrain.families import FamilySpec, register
from gentrain.families.flow.config import FlowConfig

FAMILY = register(
    FamilySpec(
        name="flow",
        modality="image",
        config_cls=FlowConfig,
        flavors={
            "debug": {"hidden": 8, "checkerboard_couplings": 2, "channel_couplings": 2},
            "small": {"hidden": 64, "checkerboard_couplings": 4, "channel_couplings": 6},
            "base": {"hidden": 256, "checkerboard_couplings": 8, "channel_couplings": 12},
        },
        eval_metrics=("fid", "is", "bits_per_dim"),
        default_source="builtin:digits",
        step="gentrain.families.flow.step:FlowStep",
    )
)
