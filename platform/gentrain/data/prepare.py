"""`gentrain prepare SPEC`: every shard of the spec's data decoded and resized (images) or
tokenized (text) once, on Ray Data over every CPU of the cluster, into prepared shards and a
manifest (gentrain.data.prepared). A BPE tokenizer is trained once, here, and saved beside the
shards. Shards already written are kept (a stopped prepare goes on where it was), and data
prepared before from the same source is not prepared again."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq

from gentrain.data import Data, open_data
from gentrain.data.prepared import FORMAT, MANIFEST, read_manifest, shard_table
from gentrain.errors import SpecError
from gentrain.spec_sections import DataSection
from gentrain.storage import filesystem

TOKENIZER_FILE = "tokenizer.json"
COUNTS = b"gentrain.counts"  # a shard file's metadata: its training and held-out examples,
SOURCE = b"gentrain.source"  # and the digest of the data and settings it was prepared from


@dataclass(frozen=True)
class Prepared:
    location: str
    examples: dict[str, int]  # train, heldout
    shards: int
    bytes: int
    reused: int  # shards found already written
    already: bool = False  # the whole preparation was there


def prepare(
    data: DataSection, out: str, *, on_shard: Callable[[int, int], None] | None = None
) -> Prepared:
    """Prepare `data` into `out` (local or s3://) on the Ray cluster this process is connected
    to; `on_shard(examples, shards_total)` after each shard."""
    import ray

    if data.source.startswith("prepared:"):
        raise SpecError(f"data.source: {data.source} is prepared already")
    opened = open_data(data)
    out = out.rstrip("/")
    digest = opened.fingerprint["digest"]
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest["source"]["digest"] == digest:
            return _summary(out, manifest, reused=len(manifest["shards"]), already=True)
        raise SpecError(
            f"--out: {out} holds data prepared from other data ({manifest['source']['source']}, "
            "or other settings); choose another --out"
        )
    fs, root = filesystem(out)
    fs.create_dir(root, recursive=True)
    worker_data = _tokenizer_beside_shards(opened, data, out)
    shards = opened.stream.source.shards
    found = _written(fs, root, digest, out)
    counts = {index: found[index] for index in range(len(shards)) if index in found}
    for index in counts:
        if on_shard:
            on_shard(sum(counts[index]), len(shards))
    todo = [{"index": index} for index in range(len(shards)) if index not in counts]
    dtype = _dtype(opened, data)
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False
        results = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            _PrepareShards,
            fn_constructor_kwargs={
                "data": ray.put(worker_data),
                "out": out,
                "dtype": dtype,
                "digest": digest,
            },
            batch_size=1,
            concurrency=max(1, min(len(todo), int(ray.available_resources().get("CPU", 1)))),
            num_cpus=1,
        )
        for row in results.iter_rows():
            counts[int(row["index"])] = (int(row["train"]), int(row["heldout"]))
            if on_shard:
                on_shard(int(row["train"]) + int(row["heldout"]), len(shards))
    manifest = _manifest(opened, data, counts, fs, root, dtype)
    with fs.open_output_stream(f"{root}/{MANIFEST}") as stream:  # last: the data is whole
        stream.write(json.dumps(manifest, indent=1).encode())
    return _summary(out, manifest, reused=len(found))


class _PrepareShards:
    """A Ray Data worker: opens the data once, then prepares the shards it is handed."""

    def __init__(self, data, out: str, dtype: str, digest: str):
        import ray

        self.data: Data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
        self.out, self.dtype, self.digest = out, dtype, digest

    def __call__(self, batch: dict) -> dict:
        index = int(batch["index"][0])
        stream = self.data.stream
        train, heldout = stream.read(stream.source.shards[index])
        examples = stream.examples
        table = shard_table(
            examples.arrays(train).astype(self.dtype), examples.arrays(heldout).astype(self.dtype)
        )
        table = table.replace_schema_metadata(
            {COUNTS: f"{len(train)} {len(heldout)}", SOURCE: self.digest}
        )
        fs, root = filesystem(self.out)
        name = f"{root}/{_shard_file(index)}"
        partial = name if self.out.startswith("s3://") else f"{name}.{os.getpid()}.partial"
        pq.write_table(table, partial, filesystem=fs)
        if partial != name:
            fs.move(partial, name)  # whole or absent: a stopped prepare leaves no torn shard
        return {"index": [index], "train": [len(train)], "heldout": [len(heldout)]}


def _tokenizer_beside_shards(opened: Data, data: DataSection, out: str) -> Data:
    """Save a trained or pretrained tokenizer beside the shards; the workers then read that one
    (a BPE tokenizer is not trained again)."""
    tokenizer = getattr(opened.stream.examples, "tokenizer", None)
    if tokenizer is None or data.tokenizer == "byte":
        return opened
    fs, root = filesystem(out)
    with fs.open_output_stream(f"{root}/{TOKENIZER_FILE}") as stream:
        stream.write(tokenizer.to_json().encode())
    return open_data(data.model_copy(update={"tokenizer": f"{out}/{TOKENIZER_FILE}"}))


def _written(
    fs: pyarrow.fs.FileSystem, root: str, digest: str, out: str
) -> dict[int, tuple[int, int]]:
    """Shards a stopped prepare of the same data wrote already: index -> (training, held-out)
    examples. Shards of other data are refused, not mixed in."""
    found = {}
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    for info in fs.get_file_info(selector):
        name = Path(info.path).name
        if name.startswith("shard-") and name.endswith(".parquet"):
            metadata = pq.read_metadata(info.path, filesystem=fs).metadata or {}
            if metadata.get(SOURCE) != digest.encode():
                raise SpecError(
                    f"--out: {out} holds {name}, prepared from other data or settings; "
                    "choose another --out"
                )
            train, heldout = metadata[COUNTS].decode().split()
            found[int(name[6:-8])] = (int(train), int(heldout))
    return found


def _dtype(opened: Data, data: DataSection) -> str:
    """How examples are stored: token ids in 2 bytes when the vocabulary allows, pixels as
    bytes, the built-in digits as they are (floats)."""
    if opened.modality == "text":
        return "uint16" if opened.info.vocab_size <= 2**16 else "int32"
    return "float32" if data.source == "builtin:digits" else "uint8"


def _manifest(opened: Data, data: DataSection, counts: dict, fs, root: str, dtype: str) -> dict:
    entries = []
    for index in sorted(counts):
        info = fs.get_file_info(f"{root}/{_shard_file(index)}")
        train, heldout = counts[index]
        entries.append(
            {"file": _shard_file(index), "train": train, "heldout": heldout, "bytes": info.size}
        )
    text = opened.modality == "text"
    shape = [data.seq_len] if text else list(opened.info.shape)
    return {
        "format": FORMAT,
        "modality": opened.modality,
        "shape": shape,
        "dtype": dtype,
        "tokenizer": ("byte" if data.tokenizer == "byte" else TOKENIZER_FILE) if text else None,
        "settings": opened.fingerprint["settings"],
        "source": {"source": data.source, "digest": opened.fingerprint["digest"]},
        "examples": {
            "train": sum(train for train, _ in counts.values()),
            "heldout": sum(heldout for _, heldout in counts.values()),
        },
        "shards": entries,
    }


def _summary(out: str, manifest: dict, *, reused: int, already: bool = False) -> Prepared:
    return Prepared(
        location=out,
        examples=manifest["examples"],
        shards=len(manifest["shards"]),
        bytes=sum(entry["bytes"] for entry in manifest["shards"]),
        reused=reused,
        already=already,
    )


def _shard_file(index: int) -> str:
    return f"shard-{index:06d}.parquet"


def default_out(name: str) -> str:
    return str(Path(".gentrain") / "prepared" / name)
