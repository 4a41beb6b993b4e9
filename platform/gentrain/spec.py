"""The job spec: the whole job (its sections in spec_sections.py and spec_sweep.py) and the
rules across sections, loading from YAML, --set overrides, one-line errors.

Imports no ray or mlflow: validation stays fast and starts nothing.
"""

import copy
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from gentrain import places
from gentrain.errors import SpecError
from gentrain.spec_sections import (
    FEATURE_EXTRACTORS,
    DataSection,
    EvalSection,
    ModelSection,
    OptimSection,
    Section,
    StorageSection,
    TrackingSection,
    TrainSection,
    default_features,
    source_modality,
)
from gentrain.spec_sweep import SweepSection


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
    raw = read_yaml(path)
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


def read_yaml(path: Path) -> dict[str, Any]:
    """A spec file's mapping, as written; what is not one raises a one-line SpecError."""
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
