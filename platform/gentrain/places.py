"""The places a spec names (data, checkpoints, the tracking store, starting weights, swap space):
the forms gentrain supports for each, checked before anything starts. Form only: whether a
bucket or a server answers is the run's first check (storage.check_bucket, tracking).

Imports no ray, mlflow or torch: spec validation uses it."""

import re
from pathlib import Path

# s3://BUCKET[/KEY]: AWS's rules for bucket names (3-63 of a-z 0-9 . -, a letter or digit at
# each end), which every S3-compatible server follows
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
# eval.dataset: a file of questions (gentrain.data.questions)
EVAL_DATASET_SUFFIXES = (".jsonl", ".csv", ".parquet", ".pq")
# The MLflow tracking stores gentrain supports: a server, SQLite, PostgreSQL (psycopg: the stack
# extra), Databricks. MLflow 3 refuses its old file store (./mlruns).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "databricks")
TRACKING_FORMS = (
    "http(s)://HOST[:PORT], sqlite:///PATH, postgresql://USER@HOST/DB, databricks, or a local "
    "SQLite file such as mlflow.db"
)


def scheme(value: str) -> str | None:
    """The scheme of a URI ('s3', 'runs', ...); None for a plain path."""
    found = SCHEME.match(value)
    return found.group(1).lower() if found else None


def check_data_location(location: str, *, directory: bool | None) -> str:
    """A data source's file (directory False), directory (True) or either (None): s3://BUCKET/KEY,
    or a local path that exists (made absolute: Ray Train workers run in a working directory of
    their own)."""
    if _is_s3(location, local="a local path", s3_form="s3://BUCKET/KEY"):
        return location
    path = Path(location)
    if directory is None and any(char in location for char in "*?"):  # a glob: its folder
        base = Path(location[: min(location.index(c) for c in "*?" if c in location)]).parent
        if not base.is_dir():
            raise ValueError(f"{base} (where {location} looks) does not exist")
        return str(base.resolve() / path.relative_to(base)) if not path.is_absolute() else location
    if not path.exists():
        raise ValueError(f"{location} does not exist")
    if directory is not None and path.is_dir() != directory:
        raise ValueError(f"{location} is {'not ' if directory else ''}a directory")
    return str(path.resolve())


def check_storage_path(path: str) -> str:
    """storage.path: s3://BUCKET[/PREFIX], or a local directory (or one to create)."""
    if not _is_s3(path, local="a local directory", s3_form="s3://BUCKET/PREFIX"):
        if Path(path).is_file():
            raise ValueError("a file, not a directory: give a directory for checkpoints")
    return path


def _is_s3(value: str, *, local: str, s3_form: str) -> bool:
    """Whether `value` is a well-formed S3 URI (False: a local path); other schemes are refused."""
    kind = scheme(value)
    if kind not in (None, "s3"):
        raise ValueError(f"{kind}:// is not supported; use {local} or {s3_form}")
    if kind == "s3" and not S3_URI.match(value):
        raise ValueError(
            f"expected {s3_form} (a bucket name of 3-63 lowercase letters, digits, '.' or '-')"
        )
    return kind == "s3"


def check_tracking_uri(uri: str) -> str:
    """An MLflow tracking store gentrain supports, in a form MLflow reads."""
    kind = scheme(uri)
    if uri == "databricks":
        return uri
    if kind is None:
        if not uri.endswith(".db"):
            raise ValueError(f"a local store is a SQLite file ending in .db; use {TRACKING_FORMS}")
        return uri
    if kind not in TRACKING_SCHEMES:
        raise ValueError(f"{kind}:// is not supported; use {TRACKING_FORMS}")
    rest = uri.partition("://")[2]
    if kind in ("http", "https", "postgresql") and not rest.split("/")[0]:
        raise ValueError(f"no host; use {kind}://HOST...")
    if kind == "sqlite" and not (rest.startswith("/") and rest.strip("/")):
        raise ValueError("no path; a local store is sqlite:///PATH")
    return uri


def check_init_from(value: str) -> str:
    """model.init_from: an MLflow model (runs:/RUN_ID/PATH, models:/NAME/VERSION or
    models:/NAME@ALIAS) or a gentrain checkpoint directory on this machine."""
    kind = scheme(value)
    if kind == "runs" and not re.match(r"^runs:/[^/]+/.+", value):
        raise ValueError("an MLflow run's model is runs:/RUN_ID/model")
    if kind == "models" and not re.match(r"^models:/[^/@]+([/@].+)?$", value):
        raise ValueError("a registered model is models:/NAME/VERSION or models:/NAME@ALIAS")
    if kind in ("runs", "models"):
        return value
    expected = "runs:/RUN_ID/model, models:/NAME/VERSION or a gentrain checkpoint path"
    if kind is not None:
        raise ValueError(f"{kind}:// is not supported; expected {expected}")
    if not Path(value).exists():
        raise ValueError(f"{value} does not exist; expected {expected}")
    return str(Path(value).resolve())  # workers load it, from a working directory of their own


def check_nvme_path(path: str) -> str:
    """DeepSpeed's NVMe swap directory: an absolute path on each worker's own machine (it is not
    checked here: the driver's machine may have no such disk)."""
    if scheme(path) is not None or not Path(path).is_absolute():
        raise ValueError("give an absolute local directory on the workers' machines")
    return path


TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face (fast) tokenizer, as save_pretrained writes it


def check_tokenizer(location: str) -> str:
    """A Hugging Face tokenizer: a tokenizer.json, or a model directory holding one; local (made
    absolute) or s3://."""
    if _is_s3(location, local="a local path", s3_form="s3://BUCKET/KEY"):
        return location
    path = Path(location)
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        raise ValueError(f"{location} holds no {TOKENIZER_FILE}")
    if not path.exists():
        raise ValueError(f"{location} does not exist")
    return str(path.resolve())


def holds_tokenizer(directory: str) -> bool:
    """Whether a model directory has a tokenizer of its own (an s3:// one is taken to: its
    reader says when it has none)."""
    return directory.startswith("s3://") or (Path(directory) / TOKENIZER_FILE).is_file()
