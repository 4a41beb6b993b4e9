"""GPT family: a decoder-only transformer trained on next-token prediction."""

from gentrain.families import TEXT_QUALITY, FamilySpec, register
from gentrain.families.gpt.config import GPTConfig

FAMILY = register(
    FamilySpec(
        name="gpt",
        modality="text",
        config_cls=GPTConfig,
        flavors={
            "debug": {"layers": 2, "dim": 32, "heads": 2, "dropout": 0.0},
            "small": {"layers": 4, "dim": 128, "heads": 4, "dropout": 0.0},
            "base": {"layers": 12, "dim": 768, "heads": 12, "dropout": 0.1},  # GPT-2 small
        },
        eval_metrics=("perplexity",),
        text_metrics=TEXT_QUALITY,
        default_source="builtin:python_docs",
        step="gentrain.families.gpt.step:GPTStep",
    )
)
