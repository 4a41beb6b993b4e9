"""Datasets named by `data.source`, their deterministic sharding across workers, augmentations.

Images are float (N, C, H, W) in [-1, 1]; text is int64 token windows (N, seq_len).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from gentrain.errors import GentrainError, SpecError
from gentrain.families import DataInfo
from gentrain.spec import DataSection

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


class ShardedBatches:
    """The batch each worker trains on at each step, as a pure function of (seed, step, rank).

    Every epoch is a seeded permutation cut into global batches; worker `rank` trains on rows
    [rank * batch_size, (rank + 1) * batch_size) of each (its own part of every epoch). So a
    resumed run sees exactly the batches an uninterrupted one would have seen, and the global batch
    of a step is the same for any number of workers.
    """

    def __init__(
        self, examples: torch.Tensor, *, batch_size: int, rank: int, world: int, seed: int
    ):
        self.examples = examples
        self.batch_size = batch_size  # per worker
        self.rank, self.world, self.seed = rank, world, seed
        self.per_epoch = len(examples) // (batch_size * world)
        if self.per_epoch == 0:  # user data can be small
            raise GentrainError(
                f"data.batch_size: {batch_size * world} is more than the {len(examples)} training "
                "examples; lower it or add data"
            )

    def at(self, step: int) -> torch.Tensor:
        """The batch of the 1-based optimizer `step`."""
        epoch, index = divmod(step - 1, self.per_epoch)
        order = torch.randperm(
            len(self.examples),
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )
        first = index * self.batch_size * self.world + self.first_row
        return self.examples[order[first : first + self.batch_size]]

    @property
    def first_row(self) -> int:
        """Where this worker's rows start in the global batch."""
        return self.rank * self.batch_size


def augment(images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Random augmentations of a batch (B, C, H, W) in [-1, 1], drawn from torch's global RNG."""
    for name in names:
        if name == "hflip":
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        elif name == "random_crop":
            images = _random_crop(images, pad=max(1, images.shape[-1] // 8))
        elif name == "color_jitter":
            images = _color_jitter(images)
        elif name == "noise":
            images = (images + 0.05 * torch.randn_like(images)).clamp(-1, 1)
        else:
            raise AssertionError(f"unknown augmentation {name}")
    return images


def _random_crop(images: torch.Tensor, *, pad: int) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (reflect padding, then a crop back to size)."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch,)).tolist()
    dx = torch.randint(0, 2 * pad + 1, (batch,)).tolist()
    return torch.stack(
        [
            padded[i, :, y : y + height, x : x + width]
            for i, (y, x) in enumerate(zip(dy, dx, strict=True))
        ]
    )


def _color_jitter(images: torch.Tensor, strength: float = 0.2) -> torch.Tensor:
    """Random brightness, contrast and (RGB only) saturation per image, each by up to `strength`."""
    batch = images.shape[0]

    def factor() -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(batch, 1, 1, 1, device=images.device) - 1)

    images = (images + 1) * factor() - 1  # brightness: scale intensities in [0, 2]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * factor() + mean  # contrast
    if images.shape[1] == 3:
        gray = images.mean(dim=1, keepdim=True)
        images = (images - gray) * factor() + gray  # saturation
    return images.clamp(-1, 1)
