"""The job spec: pydantic sections (unknown keys, wrong types: errors), loading, --set overrides.

Imports no ray or mlflow: validation stays fast and starts nothing.
"""

import copy
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gentrain import places
from gentrain.errors import SpecError
from gentrain.sizes import parse_size

DATA_SOURCE_KINDS = ("builtin", "parquet", "images", "text", "prepared")
BUILTIN_IMAGES = ("digits",)  # gentrain.data.digits
BUILTIN_CORPORA = ("python_docs",)  # gentrain.data.text
FEATURE_EXTRACTORS = ("classifier:digits", "inception")  # gentrain.metrics.features


def source_modality(source: str) -> Literal["image", "text"] | None:
    """What a source holds, when its name says (parquet: only its column's type does;
    prepared: its manifest)."""
    kind, _, rest = source.partition(":")
    if kind == "builtin":
        return "image" if rest in BUILTIN_IMAGES else "text"
    return {"images": "image", "text": "text"}.get(kind)


def default_features(data_source: str) -> str:
    """The FID / IS feature extractor used when `eval.features` is not set."""
    return "classifier:digits" if data_source == "builtin:digits" else "inception"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _place_check(field: str, check):
    """A section's validator of a field that names a place (places.py); None stays None."""
    return field_validator(field)(lambda value: None if value is None else check(value))


class ModelSection(Section):
    family: str
    flavor: str = "small"
    overrides: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None

    _place = _place_check("init_from", places.check_init_from)

    @model_validator(mode="before")
    @classmethod
    def _places_in_overrides(cls, raw: Any) -> Any:
        """Overrides that name a place (a family's model directory, say): s3:// or a local path
        that exists, made absolute (Ray Train workers run in a directory of their own)."""
        from gentrain.families import get_family

        if not (
            isinstance(raw, dict)
            and isinstance(raw.get("family"), str)
            and isinstance(raw.get("overrides"), dict)
        ):
            return raw
        try:
            family = get_family(raw["family"])
        except SpecError:
            return raw  # model.family's own check says what is wrong
        overrides = dict(raw["overrides"])
        for key, directory in family.places.items():
            if overrides.get(key) is None:
                continue
            if not isinstance(overrides[key], str):
                raise SpecError(f"model.overrides.{key}: expected a path or s3:// URI")
            try:
                overrides[key] = places.check_data_location(overrides[key], directory=directory)
            except ValueError as err:
                raise SpecError(f"model.overrides.{key}: {err}") from None
        return {**raw, "overrides": overrides}

    @model_validator(mode="after")
    def _known_family_and_flavor(self) -> "ModelSection":
        from gentrain.families import get_family

        get_family(self.family).config(flavor=self.flavor, overrides=self.overrides)
        return self


class DataSection(Section):
    source: str = "builtin:digits"  # a job spec without one takes its family's default_source
    batch_size: int = Field(64, ge=1, description="global batch, split evenly across workers")
    # shares of the data each global batch draws from equally; a worker reads only the shares
    # its rows come from (up to this many workers read disjoint data). Fixed for a run.
    partitions: int = Field(16, ge=1, le=4096)
    augment: tuple[Literal["hflip", "random_crop", "color_jitter", "noise"], ...] = ()
    # images: (user images are resized to image_size x image_size; channels 1 = grayscale, 3 = RGB)
    image_size: int | None = Field(None, ge=4, le=4096)
    channels: Literal[1, 3] | None = None
    column: str | None = None  # parquet: the image-bytes or text column (default: image or text)
    # text:
    # byte, bpe (trained on the data), or a Hugging Face tokenizer: a tokenizer.json or a model
    # directory holding one, local or s3://
    tokenizer: str = "byte"
    vocab_size: int = Field(1024, ge=258, le=1_000_000, description="bpe only")
    seq_len: int = Field(64, ge=4, le=65_536)

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, tokenizer: str) -> str:
        if tokenizer in ("byte", "bpe"):
            return tokenizer
        try:
            return places.check_tokenizer(tokenizer)
        except ValueError as err:
            raise ValueError(
                f"{err}; allowed: byte, bpe, or a Hugging Face tokenizer.json or model directory"
            ) from None

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        kind, sep, rest = source.partition(":")
        if not sep or kind not in DATA_SOURCE_KINDS or not rest:
            raise ValueError(f"must be one of {', '.join(k + ':...' for k in DATA_SOURCE_KINDS)}")
        builtin = (*BUILTIN_IMAGES, *BUILTIN_CORPORA)
        if kind == "builtin" and rest not in builtin:
            raise ValueError(f"built-in datasets: {', '.join('builtin:' + b for b in builtin)}")
        if kind == "builtin":
            return source
        directory = {"images": True, "prepared": True}.get(kind)  # else a file or a directory
        return f"{kind}:{places.check_data_location(rest, directory=directory)}"


Offload = Literal["none", "cpu", "nvme"]


class DeepSpeedSection(Section):
    """The fields gentrain turns into a DeepSpeed config (train.strategy: deepspeed)."""

    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"
    nvme_path: str | None = None  # where nvme offload swaps to
    _place = _place_check("nvme_path", places.check_nvme_path)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float | None = Field(None, gt=0, description="default: optim.grad_clip")
    config: dict[str, Any] = Field(default_factory=dict)  # raw DeepSpeed keys, merged on top

    @model_validator(mode="after")
    def _offload_rules(self) -> "DeepSpeedSection":
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(
                f"offload_param {self.offload_param} needs zero_stage 3 (got {self.zero_stage})"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError(f"offload_optimizer {self.offload_optimizer} needs zero_stage 1-3")
        if "nvme" in (self.offload_optimizer, self.offload_param) and not self.nvme_path:
            raise ValueError("nvme offload needs nvme_path: a directory to swap to")
        return self


class PipelineSection(Section):
    """How train.strategy: pipeline cuts the model and feeds it (workers = stages x replicas)."""

    stages: int = Field(2, ge=2)
    microbatches: int = Field(4, ge=1, description="per replica's batch")
    schedule: Literal["gpipe", "1f1b"] = "gpipe"

    @model_validator(mode="after")
    def _schedule_rules(self) -> "PipelineSection":
        if self.schedule == "1f1b" and self.microbatches < self.stages:
            raise ValueError(
                f"schedule 1f1b needs microbatches >= stages ({self.microbatches} < {self.stages})"
            )
        return self


class FSDPSection(Section):
    """How train.strategy: fsdp shards each network (torch's fully_shard, per block)."""

    reshard_after_forward: bool = Field(
        True, description="free each block's gathered weights after its forward (less memory)"
    )
    offload: Literal["none", "cpu"] = Field("none", description="keep shards and steps on CPU")


class TrainSection(Section):
    strategy: Literal["ddp", "fsdp", "deepspeed", "pipeline", "auto"] = Field(
        "ddp", description="auto: the layout `gentrain plan` recommends, chosen before the run"
    )
    workers: int = Field(2, ge=1, le=1024)
    device_memory: int | None = Field(
        None,
        description="bytes (or 24GiB, 80GB) each worker may hold, for strategy auto (default: "
        "the first GPU's memory, else this machine's RAM)",
    )
    use_gpu: bool = False
    cpus_per_worker: int | None = Field(None, ge=1)
    max_steps: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(250, ge=1)
    max_failures: int = Field(2, ge=0, description="worker-group restarts before the job fails")
    stall_timeout: float | Literal["auto", "off"] = Field(
        "auto",
        description="seconds without progress before a run is stalled (its stacks dumped, its "
        "workers restarted); auto: 10x the slowest step, at least 300 s; off",
    )
    on_nan: Literal["stop", "skip_step"] = Field(
        "stop", description="a NaN/Inf loss: fail the run, or skip that optimizer step (ddp)"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward (ddp, fsdp)"
    )
    compile: bool = Field(False, description="torch.compile each block (ddp, fsdp)")
    checkpoint_async: bool = Field(
        False, description="write checkpoints while the next step trains (ddp, fsdp)"
    )
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    pipeline: PipelineSection = PipelineSection()
    fsdp: FSDPSection = FSDPSection()

    @field_validator("device_memory", mode="before")
    @classmethod
    def _a_size(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        return parse_size(str(value))

    @field_validator("stall_timeout", mode="before")
    @classmethod
    def _seconds_auto_or_off(cls, value: Any) -> Any:
        if value is False:  # YAML reads a bare `off` as false
            return "off"
        if value in ("auto", "off"):
            return value
        try:
            seconds = float(value) if not isinstance(value, bool) else 0.0
        except (TypeError, ValueError):
            seconds = 0.0
        if seconds < 5:
            raise ValueError("seconds (at least 5), auto or off")
        return seconds

    @model_validator(mode="after")
    def _strategy_rules(self) -> "TrainSection":
        if self.precision != "fp32" and not self.use_gpu:
            raise ValueError(
                f"precision {self.precision} needs train.use_gpu: true (CPU trains fp32)"
            )
        if self.strategy != "deepspeed" and self.deepspeed != DeepSpeedSection():
            raise ValueError(f"deepspeed is set but strategy is {self.strategy}")
        if self.strategy != "pipeline" and self.pipeline != PipelineSection():
            raise ValueError(f"pipeline is set but strategy is {self.strategy}")
        if self.strategy != "fsdp" and self.fsdp != FSDPSection():
            raise ValueError(f"fsdp is set but strategy is {self.strategy}")
        if self.strategy == "fsdp" and self.precision == "fp16":
            raise ValueError("fsdp trains in fp32 or bf16, not fp16 (no loss scaling)")
        if self.fsdp.offload == "cpu" and not self.use_gpu:
            raise ValueError("fsdp.offload cpu needs train.use_gpu: true (nothing to offload)")
        for option in ("activation_checkpointing", "compile", "checkpoint_async"):
            if getattr(self, option) and self.strategy not in ("ddp", "fsdp", "auto"):
                raise ValueError(f"{option} needs strategy ddp or fsdp (got {self.strategy})")
        if self.on_nan == "skip_step" and self.strategy not in ("ddp", "auto"):
            raise ValueError(
                f"on_nan skip_step needs strategy ddp (got {self.strategy}); use on_nan: stop"
            )
        if self.strategy == "pipeline":
            stages = self.pipeline.stages
            if stages > self.workers or self.workers % stages:
                raise ValueError(
                    f"pipeline.stages {stages} must divide train.workers {self.workers} "
                    "(workers = stages x data-parallel replicas)"
                )
            if self.precision == "fp16":
                raise ValueError("pipeline trains in fp32 or bf16, not fp16 (no loss scaling)")
        return self

    @property
    def data_parallel(self) -> int:
        """Into how many parts each global batch is cut (pipeline replicas or workers)."""
        return self.workers // self.pipeline.stages if self.strategy == "pipeline" else self.workers

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step of each data-parallel part."""
        if self.strategy == "deepspeed":
            return self.deepspeed.gradient_accumulation_steps
        return self.pipeline.microbatches if self.strategy == "pipeline" else 1


class OptimSection(Section):
    name: Literal["sgd", "adam", "adamw", "adagrad"] = "adam"
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("both betas must be in [0, 1)")
        return betas


class DecodingSection(Section):
    """How a text family answers the evaluation's questions (its text-quality metrics)."""

    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0, description="logits are divided by it")
    top_k: int = Field(0, ge=0, description="draw from the k likeliest tokens only; 0: all")
    top_p: float = Field(1.0, gt=0, le=1, description="draw from the smallest set this likely")
    seed: int = 0


class EvalSection(Section):
    # default: the family's own metrics (text quality is asked for by name); [] none
    metrics: tuple[str, ...] | None = None
    num_samples: int = Field(500, ge=2)
    features: str | None = None
    # held-out examples an evaluation reads (the first ones of the held-out split)
    max_examples: int = Field(1000, ge=2)
    # text quality: questions to answer (columns question, context, ground_truth; .jsonl, .csv or
    # .parquet, local or s3://), else pairs cut from held-out windows; how many; how to decode
    dataset: str | None = None
    num_answers: int = Field(64, ge=2, le=10_000)
    decoding: DecodingSection = DecodingSection()
    # a judge model (<provider>:/<model>, e.g. openai:/gpt-4o-mini) scores the five metrics
    # through MLflow's GenAI judges instead of the embedded scorer
    judge: str | None = Field(None, min_length=1)

    @field_validator("dataset")
    @classmethod
    def _dataset_file(cls, location: str | None) -> str | None:
        if location is None:
            return None
        if not location.lower().endswith(places.EVAL_DATASET_SUFFIXES):
            raise ValueError(
                f"{location}: a question file must be {', '.join(places.EVAL_DATASET_SUFFIXES)}"
            )
        return places.check_data_location(location, directory=False)


class TrackingSection(Section):
    uri: str | None = None
    _place = _place_check("uri", places.check_tracking_uri)
    experiment: str | None = Field(None, min_length=1, max_length=500)
    register_as: str | None = None  # the registered model's name
    tags: dict[str, str] = {}  # on every run of the spec (a sweep's parent and trials too)

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        # MLflow's rules, checked now rather than when the trained model is registered
        if name is not None and (not name.strip() or "/" in name or ":" in name or len(name) > 250):
            raise ValueError("a registered model's name: 1-250 characters, no '/' or ':'")
        return name

    # how long a finished run waits for a tracking store that is away before it leaves what
    # the store lacks in its outbox for `gentrain runs upload`
    wait_at_end: float = Field(120.0, ge=0)
    # CPU, memory, disk, network and GPU of every node that runs a worker, every this many seconds
    system_metrics: bool = True
    system_metrics_every: float = Field(10.0, ge=0.5, le=3600)


class StorageSection(Section):
    """Where Ray keeps checkpoints and results: a local directory, s3://BUCKET/PREFIX, or a
    filesystem every node of a cluster mounts (say so with `shared: true`)."""

    path: str = ".gentrain/checkpoints"
    shared: bool = Field(False, description="path is on a filesystem every node mounts")
    _place = _place_check("path", places.check_storage_path)


DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")


def check_distribution(dist: Any) -> None:
    """One sweep dimension: {uniform|loguniform|int: [a, b]} with a < b, or {choice|grid: [...]}."""
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ValueError(f"must be one of {', '.join(f'{{{d}: ...}}' for d in DISTRIBUTIONS)}")
    ((kind, values),) = dist.items()
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ValueError(f"{kind} takes a non-empty list of values")
        return
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"{kind} takes [low, high] ({'integers' if kind == 'int' else 'numbers'})")
    low, high = values
    if not low < high:
        raise ValueError(f"{kind} needs low < high (got [{low}, {high}])")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs 0 < low (got {low})")


def _check_space(space: dict[str, Any]) -> dict[str, Any]:
    for key, dist in space.items():
        try:
            check_distribution(dist)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    return space


class AshaSection(Section):
    """Successive halving on the sweep metric, counted in evaluations (train.eval_every)."""

    grace_period: int = Field(1, ge=1, description="evaluations before a trial may be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class PbtSection(Section):
    """Population based training: every `perturbation_interval` evaluations, the worst trials
    load a better trial's checkpoint and go on with mutated hyperparameters."""

    perturbation_interval: int = Field(1, ge=1, description="evaluations between exploits")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    mutations: dict[str, dict[str, Any]] | None = None  # default: the space's dimensions

    @field_validator("mutations")
    @classmethod
    def _valid_mutations(cls, mutations: dict | None) -> dict | None:
        return _check_space(mutations) if mutations else mutations


class TpeSection(Section):
    """Optuna's TPE sampler (search: bayesian, sampler: tpe)."""

    multivariate: bool = False  # one model of the dimensions together, not one each
    # trials still running count as a bad result, so concurrent trials spread out;
    # default: on when sweep.concurrency is more than 1
    constant_liar: bool | None = None


class SweepSection(Section):
    """`gentrain sweep`: Ray Tune over `space` (dotted spec keys to distributions)."""

    search: Literal["grid", "random", "bayesian"] = "random"
    sampler: Literal["tpe", "gp"] = "tpe"  # bayesian: Optuna's TPE or Gaussian process
    tpe: TpeSection = TpeSection()
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    trials: int = Field(8, ge=1, description="ignored by grid: the grid's size is the count")
    # trials side by side; auto: as many as the cluster has room for
    concurrency: int | Literal["auto"] = 1
    seed: int = Field(0, ge=0)
    time_budget: float | None = Field(None, gt=0, description="seconds")
    # training steps of all trials together: no trial is started, and those running are
    # stopped, once they are spent
    budget_steps: int | None = Field(None, ge=1)
    # an earlier sweep's parent run id, or an experiment: bayesian search learns from its
    # finished trials; grid and random search skip the configurations it ran
    warm_start: str | None = None
    scheduler: Literal["none", "asha", "pbt"] = "none"
    asha: AshaSection = AshaSection()
    pbt: PbtSection = PbtSection()
    space: dict[str, dict[str, Any]]

    @field_validator("concurrency", mode="before")
    @classmethod
    def _valid_concurrency(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise ValueError("a number of trials at once (1 or more), or auto")

    @field_validator("space")
    @classmethod
    def _valid_space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not space:
            raise ValueError(
                "name at least one dotted spec key, e.g. optim.lr: {loguniform: [1e-5, 1e-2]}"
            )
        return _check_space(space)

    @model_validator(mode="after")
    def _search_rules(self) -> "SweepSection":
        for key, dist in self.space.items():
            kind = next(iter(dist))
            if self.search == "grid" and kind != "grid":
                raise ValueError(
                    f"space.{key}: search grid takes {{grid: [...]}} only (got {kind})"
                )
            if self.search == "bayesian" and kind == "grid":
                raise ValueError(f"space.{key}: search bayesian cannot take a grid; use choice")
        if self.scheduler != "asha" and self.asha != AshaSection():
            raise ValueError(f"asha is set but scheduler is {self.scheduler}")
        if self.scheduler != "pbt" and self.pbt != PbtSection():
            raise ValueError(f"pbt is set but scheduler is {self.scheduler}")
        if (self.search, self.sampler) != ("bayesian", "tpe") and self.tpe != TpeSection():
            raise ValueError("tpe is set but search is not bayesian with sampler tpe")
        return self


class JobSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    model: ModelSection
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    optim: OptimSection = OptimSection()
    eval: EvalSection = EvalSection()
    tracking: TrackingSection = TrackingSection()
    storage: StorageSection = StorageSection()
    sweep: SweepSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _family_default_source(cls, raw: Any) -> Any:
        """data.source, when the spec leaves it out, is the family's own default dataset."""
        from gentrain.families import get_family

        model, data = (raw.get("model"), raw.get("data")) if isinstance(raw, dict) else (None, None)
        if not isinstance(model, dict) or not isinstance(model.get("family"), str):
            return raw  # the field validators report what is missing or wrong
        try:
            family = get_family(model["family"])
        except SpecError:
            return raw  # an unknown family: model.family's own error says so
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return raw
        data = {"source": family.default_source, **data}
        overrides = model.get("overrides")
        if family.tokenizer_from and "tokenizer" not in data and isinstance(overrides, dict):
            directory = overrides.get(family.tokenizer_from)
            if isinstance(directory, str) and places.holds_tokenizer(directory):
                data["tokenizer"] = directory  # the model's own tokenizer
        return {**raw, "data": data}

    @model_validator(mode="after")
    def _cross_field_rules(self) -> "JobSpec":
        from gentrain.families import all_families, get_family

        parts = self.train.data_parallel * self.train.accumulation_steps
        if self.data.batch_size % parts:
            by = {
                "ddp": "train.workers",
                "fsdp": "train.workers",
                "auto": "train.workers",
                "deepspeed": "train.workers x gradient_accumulation_steps",
                "pipeline": "replicas (workers / stages) x pipeline.microbatches",
            }[self.train.strategy]
            raise SpecError(
                f"data.batch_size: {self.data.batch_size} must be a multiple of {by} ({parts})"
            )
        family = get_family(self.model.family)
        model = self.model
        family.check_config(family.config(flavor=model.flavor, overrides=model.overrides), self)
        if self.train.strategy == "pipeline" and family.lacks("pipeline"):
            raise SpecError(
                f"train.strategy: pipeline needs {family.name}'s step to define pipeline(); "
                "ddp, fsdp and deepspeed work without it"
            )
        _check_data_fits(self.data, family.name, family.modality)
        allowed = (*family.eval_metrics, *family.text_metrics)
        for metric in self.eval.metrics or ():
            if metric not in allowed:
                raise SpecError(
                    f"eval.metrics: '{metric}' does not fit family {family.name}; "
                    f"allowed: {', '.join(allowed)}"
                )
        for key in ("dataset", "judge"):
            if getattr(self.eval, key) and not self.text_metrics:
                offered = ", ".join(family.text_metrics) or f"none for family {family.name}"
                raise SpecError(
                    f"eval.{key}: serves the text-quality metrics, which eval.metrics does not "
                    f"name; offered: {offered}"
                )
        if self.eval.dataset and self.text_metrics and family.answers == "fill":
            writers = [
                f.name
                for f in all_families().values()
                if f.answers == "continue" and f.text_metrics
            ]
            raise SpecError(
                f"eval.dataset: {family.name} fills masked spans of held-out text, it answers no "
                f"questions; a question file is for {', '.join(writers)}"
            )
        if self.eval.features is not None and self.eval.features not in FEATURE_EXTRACTORS:
            raise SpecError(f"eval.features: must be one of {', '.join(FEATURE_EXTRACTORS)}")
        if self.sweep is not None:
            _check_sweep_fits(self)
        return self

    @property
    def eval_metrics(self) -> tuple[str, ...]:
        from gentrain.families import get_family

        if self.eval.metrics is not None:  # [] turns evaluation metrics off
            return self.eval.metrics
        return get_family(self.model.family).eval_metrics

    @property
    def text_metrics(self) -> tuple[str, ...]:
        """The text-quality metrics the job computes (gentrain.metrics.text_quality)."""
        from gentrain.families import get_family

        offered = get_family(self.model.family).text_metrics
        return tuple(metric for metric in self.eval_metrics if metric in offered)

    @property
    def image_features(self) -> str | None:
        """The FID / IS feature extractor, when the job computes either."""
        if not {"fid", "is"} & set(self.eval_metrics):
            return None
        return self.eval.features or default_features(self.data.source)

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _check_sweep_fits(job: "JobSpec") -> None:
    """The metric is one the job reports, and every value the space can give makes a valid job
    (each bound, choice and grid value, one key at a time)."""
    sweep = job.sweep
    raw = [
        f"{metric}_raw" for metric in job.text_metrics if metric != "mauve" and not job.eval.judge
    ]
    reported = ("loss", *job.eval_metrics, *raw)
    if sweep.metric not in reported:
        raise SpecError(
            f"sweep.metric: '{sweep.metric}' is not reported by this job; allowed: "
            f"{', '.join(reported)}"
        )
    base = job.to_dict()
    del base["sweep"]
    dimensions = {**sweep.space, **(sweep.pbt.mutations or {})}
    for key, dist in dimensions.items():
        ((kind, values),) = dist.items()
        for value in values:
            try:
                trial_spec(base, {key: value})
            except SpecError as err:
                raise SpecError(
                    f"sweep.space.{key}: {value!r} makes an invalid job: {err}"
                ) from None
    if sweep.scheduler == "pbt":
        if job.train.workers > 1:
            raise SpecError(
                "sweep.scheduler: pbt runs single-worker trials (train.workers: 1); use asha or "
                "none for distributed trials"
            )
        if job.train.eval_every % job.train.checkpoint_every:
            raise SpecError(
                "sweep.scheduler: pbt exploits the checkpoint taken at each evaluation; make "
                f"train.checkpoint_every ({job.train.checkpoint_every}) divide train.eval_every "
                f"({job.train.eval_every})"
            )


def trial_spec(base: dict[str, Any], values: dict[str, Any]) -> "JobSpec":
    """The job of one sweep trial: the sweep-less spec `base` with the dotted `values` set."""
    raw = copy.deepcopy(base)
    try:
        for key, value in values.items():
            _set_dotted(raw, key, value)
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_describe(err)) from None


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[a][b][c] = value for key "a.b.c"; the sections on the way must be mappings."""
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"'{part}' is not a section")
        node = child
    node[leaf] = value


def _check_data_fits(data: DataSection, family: str, modality: str) -> None:
    holds = source_modality(data.source)
    if holds is not None and holds != modality:
        raise SpecError(
            f"data.source: {data.source} holds {holds}s; family {family} trains on {modality}s"
        )
    if modality == "text" and data.augment:
        raise SpecError(
            f"data.augment: augmentations apply to images; family {family} trains on text"
        )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; empty dicts are kept as leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read, override and validate a spec; any problem raises a one-line SpecError."""
    from gentrain.families.user import search_in

    path = Path(path)
    raw = _read_yaml(path)
    search_in(path.parent, Path.cwd())  # where `model.family: package.module:NAME` is found
    for item in overrides:
        _apply_override(raw, item)
    return validate(raw, source=str(path))


def validate(raw: dict[str, Any], *, source: str = "spec") -> JobSpec:
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {_describe(err)}") from None
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader refuses it itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SpecError(f"{path}: no such file")
    if not path.is_file():
        raise SpecError(f"{path}: not a file; pass a YAML job spec")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; pass a YAML job spec") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a job spec is a YAML mapping with at least 'name' and 'model'")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    try:
        _set_dotted(raw, key, value)
    except SpecError as err:
        raise SpecError(f"--set {key}: {err}") from None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_section_at(first["loc"][:-1]).model_fields)
        return f"{field}: unknown key; allowed: {allowed}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] != "missing" and "input" in first and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    more = len(err.errors()) - 1
    located = message if not field or message.startswith(field) else f"{field}: {message}"
    return located + (f" (and {more} more)" if more else "")


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    section: type[BaseModel] = JobSpec
    for key in loc:
        annotation = section.model_fields[key].annotation
        # an optional section (`SweepSection | None`): the section itself
        section = next(
            (
                t
                for t in typing.get_args(annotation)
                if isinstance(t, type) and issubclass(t, BaseModel)
            ),
            annotation,
        )
    return section
