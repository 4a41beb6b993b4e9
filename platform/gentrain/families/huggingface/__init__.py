"""Families backed by the Hugging Face libraries themselves: any transformers causal or masked
language model, and diffusers' UNet2DModel trained as a DDPM. Their models are the libraries'
own; a run logs them as `save_pretrained` files that `from_pretrained` loads."""

from gentrain.families import FILL_METRICS, TEXT_QUALITY, FamilySpec, register
from gentrain.families.huggingface.config import TransformersConfig, UNetConfig

LM_FLAVORS = {
    "debug": {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64},
    "small": {"layers": 4, "hidden": 128, "heads": 4, "intermediate": 512},
    "base": {"layers": 12, "hidden": 768, "heads": 12, "intermediate": 3072, "dropout": 0.1},
}
LM_PLACES = {"pretrained": True, "config_file": False}

CAUSAL_LM = register(
    FamilySpec(
        name="hf_causal_lm",
        modality="text",
        config_cls=TransformersConfig,
        flavors=LM_FLAVORS,
        step="gentrain.families.huggingface.causal_lm:CausalLMStep",
        eval_metrics=("perplexity",),
        text_metrics=TEXT_QUALITY,
        places=LM_PLACES,
        tokenizer_from="pretrained",
        validate="gentrain.families.huggingface.transformers_lm:check_causal_lm",
    )
)

MASKED_LM = register(
    FamilySpec(
        name="hf_masked_lm",
        modality="text",
        config_cls=TransformersConfig,
        flavors={name: {"architecture": "bert", **sizes} for name, sizes in LM_FLAVORS.items()},
        step="gentrain.families.huggingface.masked_lm:MaskedLMStep",
        eval_metrics=("perplexity", "mlm_accuracy"),
        text_metrics=FILL_METRICS,
        answers="fill",
        places=LM_PLACES,
        tokenizer_from="pretrained",
        validate="gentrain.families.huggingface.transformers_lm:check_masked_lm",
    )
)

UNET = register(
    FamilySpec(
        name="hf_unet2d",
        modality="image",
        config_cls=UNetConfig,
        flavors={
            "debug": {"channels": (16, 32), "sample_steps": 10},
            "small": {"channels": (32, 64), "layers_per_block": 2},
            "base": {"channels": (64, 128, 256), "layers_per_block": 2, "attention": True},
        },
        step="gentrain.families.huggingface.unet:UNetStep",
        eval_metrics=("fid", "is"),
        places={"pretrained": True},
        validate="gentrain.families.huggingface.unet:check_unet",
    )
)
