"""The family registry and the interface every model family implements.

A family supplies its networks, the loss of each update phase, sampling and the module to export;
the platform (trainer.py, training_loop.py) owns the loop, optimizers, checkpoints, metrics and
reporting.

Families are the built-in ones, those installed packages offer through the entry-point group
`gentrain.families`, and the user's own, named `package.module:NAME` (families/user.py).

The registry imports no torch: a spec is validated (flavors, overrides, metrics) without it, and
a built-in family's step, which needs torch, is imported only when a step is made.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gentrain.errors import GentrainError, SpecError

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn


@dataclass(frozen=True)
class DataInfo:
    """What a family needs to know of its data to size its networks."""

    shape: tuple[int, ...]  # one example: (C, H, W) for images, (T,) token ids for text
    vocab_size: int | None = None  # text only
    decode: Callable[[list[int]], str] | None = None  # text only: token ids -> text
    mask_id: int | None = None  # text only: the token masked language models mask inputs with
    tokenizer: str | None = None  # text only: data.tokenizer (byte, bpe, or a Hugging Face one)


class FamilyWarning(UserWarning):
    """What a family says of the model it builds (say, weights newly initialised): shown in the
    terminal of the run, not only in a worker's log."""


class PipelineUnsupported(GentrainError):
    """Raised by a step's pipeline() for a model it cannot cut into blocks (the message says
    why and what trains it instead)."""


@dataclass(frozen=True)
class PipelineForm:
    """A phase written for pipeline parallelism. `inputs(batch)` gives the first block's arguments
    and the loss's target (it draws the phase's noise up front); each block takes the previous
    one's outputs (a tuple is spread over the arguments); `loss(output, target)` turns the last
    block's output into the phase's loss and terms. Together they compute what `loss()` does."""

    blocks: Sequence[nn.Module]  # in order; a pipeline cuts between blocks
    inputs: Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def run_blocks(blocks: Sequence[nn.Module], args: tuple[torch.Tensor, ...]) -> Any:
    """The blocks one after the other, as a pipeline runs them."""
    for block in blocks:
        out = block(*args)
        args = out if isinstance(out, tuple) else (out,)
    return args if len(args) > 1 else args[0]


REQUIRED_METHODS = ("build", "loss", "sample")
# what a text family whose step defines answer() may offer as eval.metrics: scored by the
# platform from its answers (gentrain.metrics.text_quality)
TEXT_QUALITY = ("similarity", "relevance", "coherence", "fluency", "groundedness", "mauve")
# those that judge a masked LM's fill of a held-out span: whether it restores the span's meaning
# and reads as the data does (a fill answers no question: relevance, coherence and groundedness
# judge an answer's relation to its question; a span is too short for MAUVE's clusters)
FILL_METRICS = ("similarity", "fluency")
MASK_SHOWN = "▯"  # how text shows a masked token


class Decoding(Protocol):
    """How answer() writes (the spec's eval.decoding)."""

    max_new_tokens: int
    temperature: float
    top_k: int  # 0: every token
    top_p: float  # 1: every token


class FamilyStep(Protocol):
    """What the trainer calls. `phases` names the networks updated each step, in order: the trainer
    gives each its own optimizer and, for each phase, backpropagates `loss(..., phase=)` into it.
    A step must define `phases`, `build`, `loss` and `sample`; the rest is optional (the defaults
    are in families/defaults.py; only train.strategy: pipeline needs `pipeline`)."""

    phases: tuple[str, ...]

    def build(self, config: Any, data: DataInfo) -> dict[str, nn.Module]: ...

    def loss(
        self, models: Mapping[str, nn.Module], batch: torch.Tensor, *, phase: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one phase and the family's own named terms to log (e.g. loss_d)."""
        ...

    def after_update(self, models: Mapping[str, nn.Module], *, phase: str) -> None:
        """Optional: runs after each optimizer step of `phase`'s network, on every rank, with
        plain modules whose whole weights are readable (e.g. to move an EMA of them)."""
        ...

    def pipeline(self, models: Mapping[str, nn.Module], *, phase: str) -> PipelineForm:
        """Phase `phase` as blocks a pipeline can cut between (see PipelineForm). Every phase
        gives blocks of the same parameter sizes, so that every phase is cut in the same places."""
        ...

    def sample(self, models: Mapping[str, nn.Module], n: int) -> torch.Tensor:
        """n samples: images in [-1, 1], (n, C, H, W); token ids, (n, T)."""
        ...

    def preview(
        self, models: Mapping[str, nn.Module], heldout: torch.Tensor
    ) -> torch.Tensor | list[str]:
        """What a person looks at after an evaluation: an image batch (n, C, H, W) in [-1, 1],
        logged as the MLflow image `samples` at the step, or texts, whose parts a line such as
        "[prompt]" or "[model]" labels, logged as rows of the MLflow table samples.json."""
        ...

    def answer(
        self, models: Mapping[str, nn.Module], prompts: torch.Tensor, decoding: Decoding
    ) -> torch.Tensor:
        """Optional, text families: the tokens (B, decoding.max_new_tokens) the model writes after
        each prompt of `prompts` (B, P), or, where FamilySpec.answers is "fill", the tokens it
        puts in place of each prompt's mask tokens (B, masked); the platform scores them
        (FamilySpec.text_metrics)."""
        ...

    def evaluate(self, models: Mapping[str, nn.Module], heldout: torch.Tensor) -> dict[str, float]:
        """The family's own held-out metrics (e.g. bits_per_dim, perplexity); image families'
        FID and IS are computed by the platform from `sample`."""
        ...

    def export(self, models: Mapping[str, nn.Module]) -> tuple[nn.Module, torch.Tensor]:
        """The module logged as the run's model (e.g. the GAN's generator) and an example input."""
        ...

    def export_files(self, models: Mapping[str, nn.Module], directory: Path) -> None:
        """Optional: files that the model's own library loads (e.g. `save_pretrained`), logged
        under the run's artifact `pretrained/` besides the MLflow model."""
        ...


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    name: str
    modality: Literal["image", "text"]
    config_cls: type  # a dataclass of the model's hyperparameters
    flavors: Mapping[str, Mapping[str, Any]]  # flavor -> config values
    step: str | type  # its FamilyStep class, or "module:Class" (imported when a step is made)
    # what `eval.metrics` may name; image families' fid and is come from `sample`
    eval_metrics: tuple[str, ...] = ()
    # the text-quality metrics (of TEXT_QUALITY) `eval.metrics` may add: the platform scores
    # the answers of the step's answer(), which continues its prompts or fills their mask tokens
    text_metrics: tuple[str, ...] = ()
    answers: Literal["continue", "fill"] = "continue"
    default_source: str | None = None  # the data a spec without data.source trains on
    # settings that name a place: setting -> True a directory, False a file, None either; local
    # paths must exist (made absolute) or be s3://
    places: Mapping[str, bool | None] = dataclasses.field(default_factory=dict)
    # the setting naming a model directory whose tokenizer reads the text when data.tokenizer is
    # not set
    tokenizer_from: str | None = None
    # "module:function" (or the function) called with (config, the whole JobSpec) when a spec
    # is validated: raises SpecError for what the family cannot build (an unknown architecture)
    validate: str | Callable[[Any, Any], None] | None = None

    def __post_init__(self):
        unknown = set(self.text_metrics) - set(TEXT_QUALITY)
        assert not unknown, f"{self.name}: no text-quality metric {sorted(unknown)}"
        if self.default_source is None:
            default = "builtin:digits" if self.modality == "image" else "builtin:python_docs"
            object.__setattr__(self, "default_source", default)

    @property
    def smallest_flavor(self) -> str:
        """What checks and tests build: `debug` where there is one, else the first flavor."""
        return "debug" if "debug" in self.flavors else next(iter(self.flavors))

    def step_class(self) -> type:
        return _resolve(self.step)

    def check_config(self, config: Any, job: Any) -> None:
        if self.validate is not None:
            _resolve(self.validate)(config, job)

    def make_step(self) -> FamilyStep:
        """The family's step, with the optional methods it leaves out filled in."""
        from gentrain.families.defaults import with_defaults

        return with_defaults(self.step_class()(), modality=self.modality)

    def lacks(self, method: str) -> bool:
        return not callable(getattr(self.step_class(), method, None))

    def config(self, *, flavor: str, overrides: Mapping[str, Any]) -> Any:
        if flavor not in self.flavors:
            raise SpecError(
                f"model.flavor: '{flavor}' is not a {self.name} flavor; "
                f"allowed: {', '.join(self.flavors)}"
            )
        fields = {f.name: f for f in dataclasses.fields(self.config_cls)}
        for key, value in overrides.items():
            if key not in fields:
                raise SpecError(
                    f"model.overrides.{key}: unknown {self.name} setting; "
                    f"allowed: {', '.join(fields)}"
                )
            expected = type(self.flavors[flavor].get(key, _default(fields[key])))
            if expected is not type(None) and not _fits(value, expected):
                raise SpecError(
                    f"model.overrides.{key}: expected {expected.__name__}, got {value!r}"
                )
        values = {**self.flavors[flavor], **overrides}
        tuples = {key: tuple(v) for key, v in values.items() if isinstance(v, list)}
        return self.config_cls(**{**values, **tuples})


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _resolve(target: Any) -> Any:
    """A "module:name" reference's object (anything else is itself)."""
    if not isinstance(target, str):
        return target
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _fits(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is tuple:  # YAML gives a list
        return isinstance(value, list | tuple)
    return isinstance(value, expected)


_REGISTRY: dict[str, FamilySpec] = {}


def register(family: FamilySpec) -> FamilySpec:
    assert family.name not in _REGISTRY, f"family {family.name} registered twice"
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> FamilySpec:
    """A built-in family by name, an installed package's (entry point) by its name, or the
    user's `package.module:NAME`."""
    from gentrain.families import user

    _load_builtin_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return user.load_reference(name)
    installed = user.installed_families()
    if name in installed:
        return user.load_installed(name, installed[name])
    allowed = ", ".join([*_REGISTRY, *installed])
    raise SpecError(
        f"model.family: unknown family '{name}'; allowed: {allowed}, or package.module:NAME "
        "naming a FamilySpec in your own code"
    )


def all_families(*, installed: bool = False) -> dict[str, FamilySpec]:
    """The built-in families, and with `installed` those of installed packages too."""
    from gentrain.families import user

    _load_builtin_families()
    families = dict(_REGISTRY)
    if installed:
        for name, value in user.installed_families().items():
            families[name] = user.load_installed(name, value)
    return families


def _load_builtin_families() -> None:
    import gentrain.families.bert  # noqa: F401
    import gentrain.families.diffusion  # noqa: F401
    import gentrain.families.flow  # noqa: F401
    import gentrain.families.gan  # noqa: F401  (registers itself)
    import gentrain.families.gpt  # noqa: F401
    import gentrain.families.huggingface  # noqa: F401
    import gentrain.families.vae  # noqa: F401
