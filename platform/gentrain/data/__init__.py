"""Datasets named by `data.source` (their batches and augmentations: data.batches).

Images are float (N, C, H, W) in [-1, 1]; text is int64 token windows (N, seq_len). torch is
imported where a dataset is built, not with this module: a bad local image is refused before
torch loads (seconds), as quickly as a bad spec (bench/bad_input.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gentrain.errors import GentrainError, SpecError
from gentrain.families import DataInfo
from gentrain.spec import DataSection

if TYPE_CHECKING:
    import torch

IMAGE_HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    train: torch.Tensor  # (N, ...) examples
    heldout: torch.Tensor  # (M, ...) for evaluation only
    info: DataInfo

    @property
    def modality(self) -> Literal["image", "text"]:
        return "text" if self.info.vocab_size else "image"


def load_dataset(data: DataSection | str) -> Dataset:
    """The train / held-out split of `data.source`; built-in sets ship with a package or Python,
    user data is read from a local path or s3://."""
    if isinstance(data, str):
        data = DataSection(source=data)
    kind, _, location = data.source.partition(":")
    if data.source == "builtin:digits":
        from gentrain.data.digits import load_digits

        return _image_dataset(load_digits("train")[0], load_digits("heldout")[0])
    if kind == "builtin":
        from gentrain.data.text import builtin_corpus

        return _text_dataset(builtin_corpus(location), data)
    if kind == "text":
        from gentrain.storage import read_bytes

        return _text_dataset(read_bytes(location).decode("utf-8", errors="replace"), data)
    if kind == "images":
        return _images_from_files(location, data)
    assert kind == "parquet", data.source
    return _parquet_dataset(location, data)


_checked: set[str] = set()  # the data sections this process has read whole


def check_source(data: DataSection) -> None:
    """Read local user data once before anything starts, so that an unreadable image, an empty
    corpus or a missing column is bad input (exit 2), not a run that fails on its workers.
    Built-in sets are known good; S3 data is read by the workers (a missing bucket or object is
    refused here, the rest where it is read). Once per process: the
    CLI checks before it imports Ray, and launch checks again for callers of its API."""
    kind, _, location = data.source.partition(":")
    key = data.model_dump_json()
    if kind == "builtin" or key in _checked:
        return
    if location.startswith("s3://"):  # its workers read it: here only whether it is there
        from gentrain.storage import check_exists

        check_exists(location, "data.source")
        _checked.add(key)
        return
    try:
        load_dataset(data)
    except GentrainError as err:
        raise SpecError(f"data.source: {err}") from None
    _checked.add(key)


def _image_dataset(train: torch.Tensor, heldout: torch.Tensor) -> Dataset:
    return Dataset(train=train, heldout=heldout, info=DataInfo(shape=tuple(train.shape[1:])))


def _split_images(images: torch.Tensor, where: str) -> Dataset:
    import torch

    if len(images) < 2:
        raise GentrainError(f"{where}: found {len(images)} image(s); need at least 2")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_heldout = max(1, round(len(images) * IMAGE_HELDOUT_FRACTION))
    return _image_dataset(images[order[n_heldout:]], images[order[:n_heldout]])


def _images_from_files(directory: str, data: DataSection) -> Dataset:
    from gentrain.data.images import IMAGE_SUFFIXES, decode_images
    from gentrain.storage import list_files, read_files

    files = list_files(directory, IMAGE_SUFFIXES)
    if not files:
        raise GentrainError(f"{directory}: no {'/'.join(IMAGE_SUFFIXES)} files found")
    images = decode_images(
        read_files(files),
        names=files,
        channels=data.channels or 3,
        size=data.image_size,
    )
    return _split_images(images, directory)


def _text_dataset(text: str, data: DataSection) -> Dataset:
    from gentrain.data.text import make_tokenizer, split_text, windows

    if not text.strip():
        raise GentrainError(f"{data.source}: the corpus is empty")
    split = split_text(text)
    tokenizer = make_tokenizer(data.tokenizer, split.train, vocab_size=data.vocab_size)
    length = data.seq_len
    train = windows(tokenizer.encode(split.train), length=length, stride=max(1, length // 2))
    heldout = windows(tokenizer.encode(split.heldout), length=length, stride=length)
    if len(heldout) == 0:
        raise GentrainError(
            f"{data.source}: too little text for data.seq_len {length}: the held-out tenth "
            "holds less than one window"
        )
    info = DataInfo(
        shape=(length,),
        vocab_size=tokenizer.vocab_size,
        decode=tokenizer.decode,
        mask_id=tokenizer.mask_id,
        tokenizer=data.tokenizer,
    )
    return Dataset(train=train, heldout=heldout, info=info)


def _parquet_dataset(path: str, data: DataSection) -> Dataset:
    """A column of encoded images (binary) or of text (string): its type decides which."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gentrain.storage import filesystem

    fs, inner = filesystem(path)
    try:
        parquet = pq.ParquetDataset(inner, filesystem=fs)  # a file or a directory of files
        names = parquet.schema.names
        column = data.column or next((c for c in ("image", "text") if c in names), None)
        if column not in names:
            wanted = repr(data.column) if data.column else "'image' or 'text'"
            raise GentrainError(
                f"{path}: no column {wanted}; columns: {', '.join(names)} (set data.column)"
            )
        values = parquet.read(columns=[column]).column(column)
    except (OSError, pa.ArrowException) as err:
        raise GentrainError(f"{path}: cannot read parquet: {str(err).splitlines()[0]}") from None
    if pa.types.is_struct(values.type) and "bytes" in [f.name for f in values.type]:
        values = values.combine_chunks().field("bytes")  # Hugging Face's image struct
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        from gentrain.data.images import decode_images

        encoded = values.to_pylist()
        rows = [f"{path} row {i}" for i in range(len(encoded))]
        images = decode_images(
            encoded, names=rows, channels=data.channels or 3, size=data.image_size
        )
        return _split_images(images, path)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return _text_dataset("\n\n".join(v for v in values.to_pylist() if v), data)
    raise GentrainError(
        f"{path}: column {column!r} is {values.type}; expected encoded image bytes or text"
    )
