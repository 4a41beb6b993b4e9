"""The Hugging Face families' settings (torch-free: a spec is validated without torch)."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TransformersConfig:
    """A transformers language model: built from a named architecture and sizes (plus any more of
    that architecture's config keys), from a config.json, or loaded from a model directory."""

    architecture: str = "llama"  # a transformers model_type: llama, gpt2, mistral, qwen2, bert...
    layers: int = 2  # num_hidden_layers
    hidden: int = 64  # hidden_size
    heads: int = 2  # num_attention_heads
    intermediate: int = 256  # the MLP's width (intermediate_size; GPT-2's n_inner)
    dropout: float = 0.0  # every dropout probability of a model built here
    config: dict[str, Any] = field(default_factory=dict)  # more keys, named as transformers does
    config_file: str | None = None  # a config.json: the architecture and sizes it says
    pretrained: str | None = None  # a model directory (local or s3://): config, weights, tokenizer


@dataclass(frozen=True)
class UNetConfig:
    """A diffusers UNet2DModel trained as a DDPM (noise prediction), sampled with DDIM."""

    channels: tuple[int, ...] = (32, 64)  # block_out_channels, one per resolution
    layers_per_block: int = 1
    attention: bool = False  # attention blocks at the lowest resolution
    train_timesteps: int = 1000
    sample_steps: int = 50  # DDIM steps when sampling
    beta_schedule: str = "linear"  # a diffusers schedule: linear, scaled_linear, squaredcos_cap_v2
    pretrained: str | None = None  # a diffusers pipeline or UNet directory (local or s3://)
