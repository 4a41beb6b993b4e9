"""A run's data as MLflow dataset inputs (the UI's Dataset column, filter and run page): its
training and held-out examples, each with where they come from, a digest that changes when the
data does (and only then), the examples' tensor schema and their counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gentrain.data import Data

CONTEXT = "mlflow.data.context"  # MLflow's input tag: what the run used the data for
SPLITS = {"train": "train", "heldout": "eval"}  # gentrain's split -> MLflow's context


def dataset_inputs(data: Data, source: str) -> list[dict]:
    """One entry a split: MLflow's Dataset fields, and the context the run used it in."""
    from gentrain.data import example_counts

    kind, _, where = source.partition(":")
    counts = example_counts(data)
    shared = {
        "files": data.fingerprint["count"],
        "bytes": data.fingerprint["bytes"],
        "shards": len(data.stream.source.shards),
    }
    entries = []
    for split, context in SPLITS.items():
        digest = hashlib.sha256(f"{data.fingerprint['digest']}/{split}".encode()).hexdigest()
        profile = {"examples": counts[split], **shared} if counts else shared
        dataset = {
            "name": _name(kind, where) + ("" if split == "train" else "-heldout"),
            "digest": digest[:16],
            **_source(kind, where),
            "schema": _schema(data),
            "profile": json.dumps(profile),
        }
        entries.append({"dataset": dataset, "context": context})
    return entries


def _name(kind: str, where: str) -> str:
    if kind == "builtin":
        return where
    return Path(where.rstrip("/").removeprefix("s3://")).name or where


def _source(kind: str, where: str) -> dict[str, str]:
    """MLflow's source fields: a local or S3 location; the built-in sets are gentrain's code."""
    if kind == "builtin":
        return {"source_type": "code", "source": json.dumps({"tags": {"gentrain.builtin": where}})}
    if where.startswith("s3://"):
        return {"source_type": "s3", "source": json.dumps({"uri": where})}
    return {"source_type": "local", "source": json.dumps({"uri": str(Path(where).resolve())})}


def _schema(data: Data) -> str:
    """The examples as training takes them: images (-1, C, H, W) float32 in [-1, 1], or token
    windows (-1, seq_len) int64."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types.schema import Schema, TensorSpec

    text = data.info.vocab_size is not None
    dtype, name = ("int64", "tokens") if text else ("float32", "image")
    spec = TensorSpec(np.dtype(dtype), (-1, *data.info.shape), name)
    return json.dumps(TensorDatasetSchema(features=Schema([spec])).to_dict())
