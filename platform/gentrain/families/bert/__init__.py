"""BERT family: an encoder-only transformer trained as a masked language model."""

from gentrain.families import FILL_METRICS, FamilySpec, register
from gentrain.families.bert.config import BERTConfig

FAMILY = register(
    FamilySpec(
        name="bert",
        modality="text",
        config_cls=BERTConfig,
        flavors={
            "debug": {"layers": 2, "dim": 32, "heads": 2, "dropout": 0.0, "sample_rounds": 4},
            "small": {"layers": 4, "dim": 128, "heads": 4, "dropout": 0.0},
            "base": {"layers": 12, "dim": 768, "heads": 12, "dropout": 0.1},  # BERT-base sized
        },
        eval_metrics=("perplexity", "mlm_accuracy"),
        text_metrics=FILL_METRICS,
        answers="fill",
        default_source="builtin:python_docs",
        step="gentrain.families.bert.step:BERTStep",
    )
)
