"""transformers language models for the hf_causal_lm and hf_masked_lm families: their config
checked when a spec is validated, the model built or loaded (offline: a local directory, or one
fetched from s3://), cut between its own layers for pipeline parallelism, saved as
`save_pretrained` files."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Literal

from gentrain.errors import GentrainError, SpecError
from gentrain.families import FamilyWarning, PipelineUnsupported
from gentrain.families.huggingface.config import TransformersConfig

Kind = Literal["causal", "masked"]
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
FAMILY_OF = {"causal": "hf_causal_lm", "masked": "hf_masked_lm"}


def check_causal_lm(config: TransformersConfig, job) -> None:
    _check(config, job, kind="causal")


def check_masked_lm(config: TransformersConfig, job) -> None:
    _check(config, job, kind="masked")


def _check(config: TransformersConfig, job, *, kind: Kind) -> None:
    """What transformers would refuse, said before anything starts: the architecture, the config
    keys, the model directory, and whether the data's tokenizer fits the model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub
    if config.pretrained and config.config_file:
        raise SpecError("model.overrides: give pretrained or config_file, not both")
    vocab, mask_id = _tokenizer_vocab_and_mask(job.data)
    if config.pretrained:
        hf_config = _pretrained_config(config.pretrained, kind=kind)
    else:
        hf_config = model_config(config, vocab_size=vocab, kind=kind)
    if kind == "masked" and mask_id is None:
        raise SpecError(
            f"data.tokenizer: {job.data.tokenizer} has no mask token; a masked language model "
            "masks its inputs with one ([MASK] or <mask>)"
        )
    if vocab > hf_config.vocab_size:
        raise SpecError(
            f"data.tokenizer: its {vocab} tokens do not fit the model's vocabulary of "
            f"{hf_config.vocab_size}; read the text with the model's own tokenizer (leave "
            "data.tokenizer unset)"
        )
    positions = getattr(hf_config, "max_position_embeddings", None)
    if config.pretrained and positions and job.data.seq_len > positions:
        raise SpecError(
            f"data.seq_len: {job.data.seq_len} is longer than the model's {positions} positions"
        )
    if job.train.strategy == "pipeline" and not pipeline_layout(hf_config.model_type):
        raise SpecError(
            f"train.strategy: pipeline cuts {', '.join(LAYOUTS)} models between their layers, "
            f"not {hf_config.model_type}; ddp and deepspeed train it"
        )


def model_config(config: TransformersConfig, *, vocab_size: int, kind: Kind):
    """The transformers config of a model built here (not loaded from a directory)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.config_file:
        try:
            hf_config = AutoConfig.from_pretrained(config.config_file, local_files_only=True)
        except Exception as err:
            raise SpecError(f"model.overrides.config_file: {_first(err)}") from None
        _check_kind(hf_config.model_type, kind, field="model.overrides.config_file")
        return hf_config
    architecture = config.architecture
    if architecture not in CONFIG_MAPPING_NAMES:
        near = [name for name in CONFIG_MAPPING_NAMES if name.startswith(architecture[:3])]
        raise SpecError(
            f"model.overrides.architecture: transformers knows no '{architecture}'"
            + (f"; close: {', '.join(near[:8])}" if near else "; e.g. llama, gpt2, bert")
        )
    _check_kind(architecture, kind, field="model.overrides.architecture")
    config_class = AutoConfig.for_model(architecture).__class__
    known = _config_keys(config_class)
    for key in config.config:
        if key not in known:
            raise SpecError(
                f"model.overrides.config.{key}: not a {config_class.__name__} setting "
                f"(transformers {_transformers_version()})"
            )
    sizes = {
        "num_hidden_layers": config.layers,
        "hidden_size": config.hidden,
        "num_attention_heads": config.heads,
        "vocab_size": vocab_size,
    }
    sizes["n_inner" if "n_inner" in known else "intermediate_size"] = config.intermediate
    if "num_key_value_heads" in known:  # grouped-query attention: as many as heads unless set
        sizes["num_key_value_heads"] = config.heads
    sizes |= {key: config.dropout for key in known if _is_dropout(key)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_config = AutoConfig.for_model(architecture, **{**sizes, **config.config})
    except Exception as err:
        raise SpecError(
            f"model.overrides.config: {architecture} refuses it: {_first(err)}"
        ) from None
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids past the vocabulary
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(hf_config, name, None)
    return hf_config


def _is_dropout(key: str) -> bool:
    return key.endswith(("dropout", "dropout_prob", "_pdrop")) and "classifier" not in key


def _config_keys(config_class) -> set[str]:
    keys = set(getattr(config_class, "attribute_map", {}))
    if dataclasses.is_dataclass(config_class):
        keys |= {f.name for f in dataclasses.fields(config_class)}
    keys |= set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    return keys


def _check_kind(model_type: str, kind: Kind, *, field: str) -> None:
    from transformers.models.auto import modeling_auto

    names = {
        "causal": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "masked": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    }
    if model_type not in names[kind]:
        other = "masked" if kind == "causal" else "causal"
        also = f"; family {FAMILY_OF[other]} trains it" if model_type in names[other] else ""
        raise SpecError(f"{field}: {model_type} has no {kind} language model in transformers{also}")


def _pretrained_config(directory: str, *, kind: Kind):
    """The config of a model directory that holds weights (s3://: its config.json is fetched)."""
    from transformers import AutoConfig

    field = "model.overrides.pretrained"
    if directory.startswith("s3://"):
        from gentrain.storage import check_exists

        check_exists(f"{directory.rstrip('/')}/config.json", field)
        local = local_copy(directory, only=("config.json",))
    else:
        local = Path(directory)
        if not (local / "config.json").is_file():
            raise SpecError(f"{field}: {directory} has no config.json")
        if not any((local / name).is_file() for name in WEIGHTS):
            raise SpecError(f"{field}: {directory} has no weights ({' or '.join(WEIGHTS)})")
    try:
        hf_config = AutoConfig.from_pretrained(str(local), local_files_only=True)
    except Exception as err:
        raise SpecError(f"{field}: {_first(err)}") from None
    _check_kind(hf_config.model_type, kind, field=field)
    return hf_config


def local_copy(directory: str, only: tuple[str, ...] = ()) -> Path:
    """A local directory holding an s3:// model directory's files (fetched once per machine,
    under GENTRAIN_CACHE_DIR); a local directory is itself."""
    if not directory.startswith("s3://"):
        return Path(directory)
    from gentrain.storage import filesystem

    fs, inner = filesystem(directory)
    cache = Path(os.environ.get("GENTRAIN_CACHE_DIR", Path.home() / ".cache" / "gentrain"))
    local = cache / "models" / hashlib.sha256(directory.encode()).hexdigest()[:16]
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(inner.rstrip("/"), recursive=True)
    for info in fs.get_file_info(selector):
        name = info.path[len(inner.rstrip("/")) + 1 :]
        target = local / name
        if info.type != pyarrow.fs.FileType.File or (only and name not in only):
            continue
        if target.is_file() and target.stat().st_size == info.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as source, open(f"{target}.part", "wb") as out:
            out.write(source.read())
        os.replace(f"{target}.part", target)
    return local


def build_model(config: TransformersConfig, *, vocab_size: int, kind: Kind):
    """The transformers model: from the model directory's weights, or newly initialised (under
    torch's global seed, the same on every rank)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
    if config.pretrained:
        hf_logging.set_verbosity_error()  # its own report of what it left out: said below
        model, info = auto.from_pretrained(
            str(local_copy(config.pretrained)), local_files_only=True, output_loading_info=True
        )
        if info["missing_keys"]:  # a head the directory lacks: said, not hidden
            missing = sorted(info["missing_keys"])
            warnings.warn(
                f"{config.pretrained} has no weights for {len(missing)} of the {kind} language "
                f"model's tensors (e.g. {missing[0]}): newly initialised",
                FamilyWarning,
                stacklevel=2,
            )
        return model
    hf_config = model_config(config, vocab_size=vocab_size, kind=kind)
    hf_config._attn_implementation = "sdpa"
    return auto.from_config(hf_config)


def save_pretrained(model, directory: Path, tokenizer: str | None) -> None:
    """`save_pretrained` files, with the data's Hugging Face tokenizer when it has one, so that
    `from_pretrained` on the directory gives the model and its tokenizer."""
    model.save_pretrained(directory)
    if tokenizer and tokenizer not in ("byte", "bpe"):
        from gentrain.places import TOKENIZER_FILE
        from gentrain.storage import read_bytes

        path = tokenizer if tokenizer.endswith(".json") else f"{tokenizer}/{TOKENIZER_FILE}"
        (directory / TOKENIZER_FILE).write_bytes(read_bytes(path))


# --- pipeline parallelism: the model's own layers as blocks ---------------------------------

# model_type -> (the base model's attribute, its embeddings, its list of layers, its final norm)
LAYOUTS = {
    "llama": ("model", "embed_tokens", "layers", "norm"),
    "mistral": ("model", "embed_tokens", "layers", "norm"),
    "qwen2": ("model", "embed_tokens", "layers", "norm"),
    "gpt2": ("transformer", None, "h", "ln_f"),
    "bert": ("bert", "embeddings", "encoder.layer", None),
    "roberta": ("roberta", "embeddings", "encoder.layer", None),
}


def pipeline_layout(model_type: str) -> tuple | None:
    return LAYOUTS.get(model_type)


def pipeline_blocks(model) -> list:
    """The model as the blocks a pipeline cuts between: its embeddings, each of its own layers,
    then its final norm and head (token ids in, logits out). Attention is left to each layer's
    own mask: causal in a decoder, none in an encoder (the windows have no padding)."""
    import torch
    from torch import nn

    model_type = model.config.model_type
    if model_type not in LAYOUTS:
        raise PipelineUnsupported(
            f"train.strategy: pipeline cuts {', '.join(LAYOUTS)} models between their layers, "
            f"not {model_type}; ddp and deepspeed train it"
        )
    base_name, embed_name, layers_name, norm_name = LAYOUTS[model_type]
    base = getattr(model, base_name)
    layers = base.get_submodule(layers_name)
    rotary = getattr(base, "rotary_emb", None)

    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            if embed_name:
                self.embed = base.get_submodule(embed_name)
            else:  # GPT-2: token and position embeddings, then dropout
                self.wte, self.wpe, self.drop = base.wte, base.wpe, base.drop

        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
            if embed_name:
                return self.embed(ids)
            positions = torch.arange(ids.shape[1], device=ids.device)
            return self.drop(self.wte(ids) + self.wpe(positions))

    class Layer(nn.Module):
        def __init__(self, layer: nn.Module):
            super().__init__()
            self.layer = layer

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
            extra = {}
            if rotary is not None:  # rotary position embeddings: recomputed in each stage
                positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
                extra = {"position_ids": positions}
                extra["position_embeddings"] = rotary(hidden, positions)
            out = self.layer(hidden, attention_mask=None, **extra)
            return out[0] if isinstance(out, tuple) else out

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = base.get_submodule(norm_name) if norm_name else nn.Identity()
            # the model's part besides its base: lm_head, or BERT's cls (transform and decoder)
            self.head = next(part for name, part in model.named_children() if name != base_name)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, vocab)
            return self.head(self.norm(hidden))

    return [Embed(), *(Layer(layer) for layer in layers), Head()]


def _tokenizer_vocab_and_mask(data) -> tuple[int, int | None]:
    """The data tokenizer's vocabulary size (at most, for bpe) and mask token (None: none)."""
    if data.tokenizer == "byte":
        return 257, 256
    if data.tokenizer == "bpe":
        return data.vocab_size, 0  # <mask> is its first token
    tokenizer = _pretrained_tokenizer(data.tokenizer)
    return tokenizer.vocab_size, tokenizer.mask_id


def _pretrained_tokenizer(location: str):
    from gentrain.data.text import PretrainedTokenizer

    try:
        return PretrainedTokenizer(location)
    except GentrainError as err:
        raise SpecError(str(err)) from None


def _first(err: BaseException) -> str:
    """The error's message on one line (at most 300 characters)."""
    return (" ".join(str(err).split()) or type(err).__name__)[:300]


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
