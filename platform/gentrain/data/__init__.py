"""Datasets named by `data.source`, streamed: see data.stream for the global example order,
data.sources for what is read, data.examples for how rows become examples.

Images are float (N, C, H, W) in [-1, 1]; text is int64 token windows (N, seq_len). The driver
reads metadata (and one sample) only; workers read the blocks they train on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gentrain.errors import GentrainError, SpecError
from gentrain.families import DataInfo
from gentrain.spec_sections import DataSection

if TYPE_CHECKING:
    import torch

    from gentrain.data.stream import Stream

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Data:
    """An opened source: how to read it, what its examples are, and its fingerprint."""

    stream: Stream
    info: DataInfo
    fingerprint: dict
    tokenizer: object | None = None  # text: what turns text into ids (to_json(), but byte's)

    @property
    def modality(self) -> Literal["image", "text"]:
        return self.stream.source.modality


@dataclass(frozen=True)
class Dataset:
    """Small data held whole (tests, benchmarks, conformance checks): every training example
    in the source's order, and every held-out one."""

    train: torch.Tensor
    heldout: torch.Tensor
    info: DataInfo

    @property
    def modality(self) -> Literal["image", "text"]:
        return "text" if self.info.vocab_size else "image"


def open_data(data: DataSection | str, *, seed: int = DEFAULT_SEED) -> Data:
    """Open `data.source` (metadata only; a BPE tokenizer is trained, or found, here)."""
    from gentrain.data.examples import ImageExamples, TextExamples
    from gentrain.data.fingerprint import fingerprint
    from gentrain.data.stream import Stream

    if isinstance(data, str):
        data = DataSection(source=data)
    source = _open_source(data.source, column=data.column)
    prints = fingerprint(source, data)
    if data.source.startswith("prepared:"):
        return _prepared(source, prints, seed=seed, partitions=data.partitions)
    if source.modality == "text":
        from gentrain.data.text import BPE_SAMPLE_CHARS, make_tokenizer

        def sample() -> str:  # the first training records, up to BPE_SAMPLE_CHARS
            probe, text = Stream(source, _Records(), seed=seed), []
            for shard in source.shards:
                text += [row for _, row in probe.read(shard, heldout=False)[0]]
                if sum(map(len, text)) >= BPE_SAMPLE_CHARS:
                    break
            return "".join(text)[:BPE_SAMPLE_CHARS]

        tokenizer = make_tokenizer(
            data.tokenizer, sample, vocab_size=data.vocab_size, key=prints["digest"]
        )
        stream = Stream(
            source,
            TextExamples(tokenizer, seq_len=data.seq_len),
            seed=seed,
            partitions=data.partitions,
        )
        info = DataInfo(
            shape=(data.seq_len,),
            vocab_size=tokenizer.vocab_size,
            decode=tokenizer.decode,
            mask_id=tokenizer.mask_id,
            tokenizer=data.tokenizer,
        )
        return Data(stream=stream, info=info, fingerprint=prints, tokenizer=tokenizer)
    digits = data.source == "builtin:digits"
    channels = 1 if digits else data.channels or 3
    examples = ImageExamples(channels=channels, size=None if digits else data.image_size)
    stream = Stream(source, examples, seed=seed, partitions=data.partitions)
    first = next((shard for shard in source.shards if shard.rows), None)
    if first is None:
        where = data.source.partition(":")[2]
        raise GentrainError(f"{where}: too little data: 0 training images (no rows)")
    name, row = source.row_names(first, 1)[0], source.read(first)[0]
    shape = tuple(examples.batch([(name, row)]).shape[1:])  # a sample: decodable, and its size
    if not data.image_size:
        examples.expect(name, shape)  # every image must have the first one's size
    return Data(stream=stream, info=DataInfo(shape=shape), fingerprint=prints)


def _prepared(source, prints: dict, *, seed: int, partitions: int) -> Data:
    from gentrain.data.prepared import PreparedExamples
    from gentrain.data.stream import Stream
    from gentrain.data.text import ByteTokenizer, PretrainedTokenizer

    manifest = source.manifest
    stream = Stream(source, PreparedExamples(manifest), seed=seed, partitions=partitions)
    if manifest["modality"] == "image":
        return Data(
            stream=stream, info=DataInfo(shape=tuple(manifest["shape"])), fingerprint=prints
        )
    name = manifest["tokenizer"]
    tokenizer = (
        ByteTokenizer() if name == "byte" else PretrainedTokenizer(f"{source.location}/{name}")
    )
    info = DataInfo(
        shape=tuple(manifest["shape"]),
        vocab_size=tokenizer.vocab_size,
        decode=tokenizer.decode,
        mask_id=tokenizer.mask_id,
        tokenizer=manifest["settings"]["tokenizer"],
    )
    return Data(stream=stream, info=info, fingerprint=prints, tokenizer=tokenizer)


def _open_source(source: str, *, column: str | None = None):
    """The source `data.source` names (built-in, parquet:, images:, text:, prepared:; local or
    s3://)."""
    from gentrain.data.prepared import PreparedSource
    from gentrain.data.sources import (
        CorpusSource,
        DigitsSource,
        ImageFolderSource,
        ParquetSource,
        TextSource,
    )

    kind, _, location = source.partition(":")
    if kind == "prepared":
        return PreparedSource(location)
    if source == "builtin:digits":
        return DigitsSource()
    if kind == "builtin":
        return CorpusSource(location)
    if kind == "images":
        return ImageFolderSource(location)
    if kind == "text":
        return TextSource(location, column=column)
    assert kind == "parquet", source
    return ParquetSource(location, column=column)


class _Records:
    """Rows as they are (what a tokenizer learns from)."""

    def from_rows(self, named_rows):
        return named_rows


def load_dataset(data: DataSection | str) -> Dataset:
    """All of a small source, through the same path as training reads it."""
    if isinstance(data, str):
        data = DataSection(source=data)
    opened = open_data(data)
    _check_size(opened, data, batch_size=1)
    train = opened.stream.everything()
    heldout = opened.stream.heldout(limit=2**62)
    return Dataset(train=train, heldout=heldout, info=opened.info)


_checked: set[str] = set()  # the data sections this process has checked


def check_source(data: DataSection, *, family=None) -> None:
    """Check user data before anything starts, from its metadata and one sample, so that a
    missing file, an unreadable Parquet footer, a missing column, an undecodable first image,
    too little data, or data of another modality than `family` trains on is bad input (exit 2),
    not a run that fails on its workers. Once per process: the CLI checks before it imports
    Ray, and launch checks again for callers of its API."""
    key = data.model_dump_json() + (family.modality if family else "")
    if _known_good(data) or key in _checked:
        return
    if data.source.partition(":")[2].startswith("s3://"):
        from gentrain.storage import check_exists

        check_exists(data.source.partition(":")[2], "data.source")
    try:
        opened = open_data(data)
        _check_size(opened, data, batch_size=data.batch_size)
    except GentrainError as err:
        message = str(err)
        raise SpecError(
            message if message.startswith("data.") else f"data.source: {message}"
        ) from None
    if family is not None and opened.modality != family.modality:
        raise SpecError(
            f"data.source: {data.source} holds {opened.modality}s; family {family.name} trains "
            f"on {family.modality}s"
        )
    _checked.add(key)


def _known_good(data: DataSection) -> bool:
    """Built-in data with a built-in tokenizer needs no look (a pretrained one does)."""
    return data.source.startswith("builtin:") and data.tokenizer in ("byte", "bpe")


def example_counts(opened: Data) -> dict[str, int] | None:
    """Training and held-out examples, from metadata: prepared data and images (rows, each held
    out or not by its hash); None for text, whose windows are known only once tokenized."""
    source = opened.stream.source
    if manifest := getattr(source, "manifest", None):
        return dict(manifest["examples"])
    if opened.modality != "image":
        return None
    heldout = sum(len(source.heldout_rows(shard, range(shard.rows))) for shard in source.shards)
    return {"train": sum(shard.rows for shard in source.shards) - heldout, "heldout": heldout}


def _check_size(opened: Data, data: DataSection, *, batch_size: int) -> None:
    """A dataset smaller than one global batch, or with nothing held out, is refused: counted
    from row counts for images, and for text only when it is small enough to read here."""
    source, where = opened.stream.source, data.source.partition(":")[2]
    shards = source.shards
    if opened.modality == "image":
        counted = example_counts(opened)
        train, heldout, unit = counted["train"], counted["heldout"], "images"
    elif sum(shard.size for shard in shards) <= 16 << 20:
        counts = [[len(part) for part in opened.stream.read(shard)] for shard in shards]
        train, heldout = (sum(column) for column in zip(*counts, strict=True))
        unit = f"windows of data.seq_len {data.seq_len} tokens"
    else:
        return
    if train < batch_size:
        raise GentrainError(
            f"{where}: too little data: {train} training {unit}, fewer than data.batch_size "
            f"{batch_size}; lower it or add data"
        )
    if not heldout:
        raise GentrainError(f"{where}: no held-out {unit} (a tenth of the rows); add data")
