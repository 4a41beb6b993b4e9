"""Prepared data (`gentrain prepare`, `data.source: prepared:PATH`): examples decoded, resized
or tokenized once, in Parquet shards of fixed-size examples (each shard's training examples,
then its held-out ones), with a manifest: counts, shape, dtype, tokenizer and the digest of the
source they were made from."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from gentrain.data.examples import as_tensor
from gentrain.data.sources import Shard, Source
from gentrain.errors import GentrainError, first_line
from gentrain.storage import filesystem, read_bytes

MANIFEST = "manifest.json"
FORMAT = "gentrain-prepared/1"
COLUMN = "example"


def read_manifest(location: str) -> dict | None:
    """The manifest of prepared data at `location`, or None when there is none."""
    fs, inner = filesystem(f"{location.rstrip('/')}/{MANIFEST}")
    if fs.get_file_info(inner).type == pa.fs.FileType.NotFound:
        return None
    try:
        manifest = json.loads(read_bytes(f"{location.rstrip('/')}/{MANIFEST}"))
    except ValueError as err:
        raise GentrainError(f"{location}/{MANIFEST}: not a manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise GentrainError(f"{location}/{MANIFEST}: not {FORMAT} data")
    return manifest


class PreparedSource(Source):
    def __init__(self, location: str):
        self.location = location.rstrip("/")
        manifest = read_manifest(self.location)
        if manifest is None:
            raise GentrainError(
                f"{location}: no {MANIFEST}: make it with `gentrain prepare SPEC --out {location}`"
            )
        self.manifest, self.modality = manifest, manifest["modality"]
        self.shards = [
            Shard(path, path, 0, entry["bytes"], entry["train"] + entry["heldout"], entry["file"])
            for entry in manifest["shards"]
            for path in [f"{self.location}/{entry['file']}"]
        ]
        self.train_counts = {entry["file"]: entry["train"] for entry in manifest["shards"]}

    def read(self, shard: Shard) -> np.ndarray:
        fs, inner = filesystem(shard.path)
        try:
            with fs.open_input_file(inner) as file:
                values = pq.ParquetFile(file).read(columns=[COLUMN]).column(COLUMN)
        except (OSError, pa.ArrowException) as err:
            raise GentrainError(f"{shard.name}: cannot read: {first_line(err)}") from None
        values = values.combine_chunks()
        dtype, shape = np.dtype(self.manifest["dtype"]), tuple(self.manifest["shape"])
        size = int(np.prod(shape))
        data = np.frombuffer(values.buffers()[1], dtype=dtype)[values.offset * size :]
        return data[: len(values) * size].reshape(len(values), *shape)

    def heldout_rows(self, shard: Shard, rows: Sequence) -> set[int]:
        return set(range(self.train_counts[shard.key], len(rows)))

    def files(self) -> dict[str, tuple[int, int | None]]:
        return {shard.path: (shard.size, shard.rows) for shard in self.shards}


class PreparedExamples:
    """Fixed-size examples as stored: uint8 pixels, float images, or int32 token windows."""

    def __init__(self, manifest: dict):
        self.modality = manifest["modality"]

    def from_rows(self, named_rows: list[tuple[str, np.ndarray]]) -> np.ndarray:
        return np.stack([row for _, row in named_rows]) if named_rows else np.empty(0)

    def batch(self, items: np.ndarray) -> torch.Tensor:
        if self.modality == "text":
            return torch.from_numpy(np.asarray(items, dtype=np.int64))
        return as_tensor(np.asarray(items))


def shard_table(examples: np.ndarray, heldout: np.ndarray) -> pa.Table:
    """One prepared shard: its training examples, then its held-out ones, as fixed-size bytes."""
    rows = np.concatenate([examples, heldout]) if len(heldout) else examples
    width = rows[0].nbytes if len(rows) else 1
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8).reshape(-1)
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(rows), [None, pa.py_buffer(flat.tobytes())]
    )
    return pa.table({COLUMN: values})
