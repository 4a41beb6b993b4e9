"""The job spec's sections (pydantic: unknown keys, wrong types are errors), each a part of
the YAML file: model, data, train, optim, eval, tracking, storage. The sweep's section is in
spec_sweep.py, the whole job and its loading in spec.py. Imports no ray, mlflow or torch."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
