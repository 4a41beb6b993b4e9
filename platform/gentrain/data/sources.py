"""Where examples come from. A source is a list of shards known from metadata alone (file
listings, sizes, Parquet footers), each read on its own into rows: encoded image bytes, text, or
(built-in digits) arrays. Nothing here reads a whole dataset."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gentrain.errors import GentrainError, first_line
from gentrain.storage import file_sizes, filesystem, read_files, read_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
FILES_PER_SHARD = 256  # image files read together
TEXT_SHARD_BYTES = 8 << 20  # text files are read in ranges of this size, cut at record ends

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Shard:
    name: str  # what messages call it: the file, with its row group or byte range
    path: str  # the file (image shards: the first file)
    part: int  # Parquet row group, text byte range, or group of image files
    size: int  # bytes (Parquet: the row group's uncompressed size)
    rows: int | None  # None until read (paragraphs or lines of a text range)
    key: str = ""  # the same wherever the data lies: the file's path inside the source, and part

    @property
    def id(self) -> str:
        return self.key or self.name


class Source:
    """Shards and how to read one. Subclasses set `modality` and `shards` from metadata."""

    modality: Modality
    shards: list[Shard]

    def read(self, shard: Shard) -> Sequence:
        raise NotImplementedError

    def row_names(self, shard: Shard, count: int) -> list[str]:
        """What a message calls each row read from `shard`."""
        return [f"{shard.name} row {i}" for i in range(count)]

    def heldout_rows(self, shard: Shard, rows: Sequence) -> set[int]:
        """Which rows of `shard` are held out."""
        return heldout_rows(shard, len(rows), first=shard == self.shards[0])

    def files(self) -> dict[str, tuple[int, int | None]]:
        """Each file's (bytes, rows): what fingerprints the data."""
        files: dict[str, tuple[int, int | None]] = {}
        for shard in self.shards:
            size, rows = files.get(shard.path, (0, 0))
            files[shard.path] = (
                size + shard.size,
                None if shard.rows is None else rows + shard.rows,
            )
        return files


class DigitsSource(Source):
    modality = "image"

    def __init__(self):
        from gentrain.data.digits import all_digits

        self.images = all_digits()  # (1797, 1, 8, 8) float32 in [-1, 1]; shipped with sklearn
        self.shards = [Shard("builtin:digits", "builtin:digits", 0, 0, len(self.images))]

    def read(self, shard: Shard) -> np.ndarray:
        return self.images


class CorpusSource(Source):
    modality = "text"

    def __init__(self, name: str):
        from gentrain.data.text import corpus_rows

        self.rows = corpus_rows(name)
        size = sum(len(row) for row in self.rows)
        self.shards = [Shard(f"builtin:{name}", f"builtin:{name}", 0, size, len(self.rows))]

    def read(self, shard: Shard) -> list[str]:
        return self.rows


class ImageFolderSource(Source):
    modality = "image"

    def __init__(self, directory: str):
        files = file_sizes(directory, IMAGE_SUFFIXES)
        if not files:
            raise GentrainError(f"{directory}: no {'/'.join(IMAGE_SUFFIXES)} files found")
        self.groups = [
            files[i : i + FILES_PER_SHARD] for i in range(0, len(files), FILES_PER_SHARD)
        ]
        self.shards = [
            Shard(f"{group[0][0]} (+{len(group) - 1} files)", group[0][0], part,
                  sum(size for _, size in group), len(group), _key(directory, group[0][0], part))
            for part, group in enumerate(self.groups)
        ]  # fmt: skip

    def read(self, shard: Shard) -> list[bytes]:
        return read_files([path for path, _ in self.groups[shard.part]])

    def row_names(self, shard: Shard, count: int) -> list[str]:
        return [path for path, _ in self.groups[shard.part]]

    def files(self) -> dict[str, tuple[int, int | None]]:
        return {path: (size, 1) for group in self.groups for path, size in group}


class ParquetSource(Source):
    """A Parquet file, or a directory of them; one shard per row group. The column's type says
    the modality: encoded image bytes (also Hugging Face's {bytes, path} struct) or text."""

    def __init__(self, location: str, *, column: str | None):
        files = [path for path, _ in file_sizes(location, (".parquet", ".pq"))]
        if not files:
            raise GentrainError(f"{location}: no .parquet files found")
        self.shards, self.column = [], column
        for path in files:
            metadata, schema = self._footer(path)
            self.column = self.column or _pick_column(schema.names, path, column)
            if self.column not in schema.names:
                raise GentrainError(
                    f"{path}: no column {self.column!r}; columns: {', '.join(schema.names)} "
                    "(set data.column)"
                )
            self.modality = _modality(schema.field(self.column).type, path, self.column)
            for group in range(metadata.num_row_groups):
                row_group = metadata.row_group(group)
                name = f"{path} row group {group}"
                size, rows = row_group.total_byte_size, row_group.num_rows
                self.shards.append(
                    Shard(name, path, group, size, rows, _key(location, path, group))
                )

    @staticmethod
    def _footer(path: str) -> tuple[pq.FileMetaData, pa.Schema]:
        fs, inner = filesystem(path)
        try:
            with fs.open_input_file(inner) as file:
                parquet = pq.ParquetFile(file)
                return parquet.metadata, parquet.schema_arrow
        except (OSError, pa.ArrowException) as err:
            raise GentrainError(f"{path}: cannot read parquet: {first_line(err)}") from None

    def read(self, shard: Shard) -> list:
        fs, inner = filesystem(shard.path)
        try:
            with fs.open_input_file(inner) as file:
                table = pq.ParquetFile(file).read_row_group(shard.part, columns=[self.column])
        except (OSError, pa.ArrowException) as err:
            raise GentrainError(f"{shard.name}: cannot read: {first_line(err)}") from None
        values = table.column(self.column).combine_chunks()
        if pa.types.is_struct(values.type):
            values = values.field("bytes")  # Hugging Face's image struct
        rows = values.to_pylist()
        if self.modality == "text":  # each row a record, ending in a blank line as paragraphs do
            return [row + "\n\n" for row in rows if row]
        if None in rows:
            raise GentrainError(f"{shard.name} row {rows.index(None)}: no image bytes (null)")
        return rows


class TextSource(Source):
    """Text files (.txt, .md: paragraphs; .jsonl: one record per line, its `data.column`, else
    `text`), a file or a directory of them, read in byte ranges cut at record ends."""

    modality = "text"

    def __init__(self, location: str, *, column: str | None):
        self.column = column or "text"
        files = file_sizes(location, TEXT_SUFFIXES)
        if not files:
            raise GentrainError(f"{location}: no {'/'.join(TEXT_SUFFIXES)} files found")
        self.shards = []
        for path, size in files:
            for part in range(max(1, -(-size // TEXT_SHARD_BYTES))):
                start = part * TEXT_SHARD_BYTES
                length = min(TEXT_SHARD_BYTES, size - start)
                name = path if size <= TEXT_SHARD_BYTES else f"{path} bytes {start}+{length}"
                self.shards.append(
                    Shard(name, path, part, length, None, _key(location, path, part))
                )
        self.sizes = dict(files)

    def files(self) -> dict[str, tuple[int, int | None]]:
        return {path: (size, None) for path, size in self.sizes.items()}

    def read(self, shard: Shard) -> list[str]:
        separator = b"\n" if shard.path.endswith(".jsonl") else b"\n\n"
        start = shard.part * TEXT_SHARD_BYTES
        first = _record_start(shard.path, start, separator, self.sizes[shard.path])
        end = _record_start(shard.path, start + shard.size, separator, self.sizes[shard.path])
        if end <= first:
            return []
        records = read_range(shard.path, first, end - first).split(separator)
        if separator == b"\n":
            return [self._json_text(shard, line) for line in records if line.strip()]
        return [
            record.decode("utf-8", errors="replace") + ("\n\n" if i < len(records) - 1 else "")
            for i, record in enumerate(records)
            if record.strip()
        ]

    def _json_text(self, shard: Shard, line: bytes) -> str:
        try:
            text = json.loads(line)[self.column]
        except (ValueError, KeyError, TypeError):
            raise GentrainError(
                f"{shard.name}: a line is not a JSON object with a {self.column!r} string: "
                f"{line[:80]!r} (set data.column)"
            ) from None
        return str(text) + "\n\n"


def _record_start(path: str, at: int, separator: bytes, size: int) -> int:
    """Where the first record starting at or after byte `at` starts (records follow a
    separator); `size` at the end of the file. Shards meeting at `at` agree on it."""
    if at <= 0 or at >= size:
        return max(0, min(at, size))
    begin, chunk = max(0, at - len(separator)), 1 << 16
    while True:
        data = read_range(path, begin, min(chunk, size - begin))
        found = data.find(separator)
        if found >= 0:
            return begin + found + len(separator)
        if begin + len(data) >= size:
            return size
        chunk *= 4  # one long record: read further


HELDOUT_ONE_IN = 10  # a tenth of the rows, spread over every shard


def heldout_rows(shard: Shard, count: int, *, first: bool) -> set[int]:
    """Which of a shard's `count` rows are held out: those whose (shard, row) hashes to one in
    HELDOUT_ONE_IN; in the source's first shard at least one (its last row), so that small
    data has something to evaluate on."""
    chosen = {
        i for i in range(count) if zlib.crc32(f"{shard.id}#{i}".encode()) % HELDOUT_ONE_IN == 0
    }
    return chosen or ({count - 1} if first and count > 1 else set())


def _key(location: str, path: str, part: int) -> str:
    inside = path[len(location) :].lstrip("/") if path.startswith(location) else ""
    return f"{inside or path.rsplit('/', 1)[-1]}#{part}"


def _pick_column(names: list[str], path: str, column: str | None) -> str:
    found = column or next((c for c in ("image", "text") if c in names), None)
    if found is None:
        raise GentrainError(
            f"{path}: no column 'image' or 'text'; columns: {', '.join(names)} (set data.column)"
        )
    return found


def _modality(kind: pa.DataType, path: str, column: str) -> Modality:
    if pa.types.is_struct(kind) and "bytes" in [f.name for f in kind]:
        kind = kind.field("bytes").type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "image"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    raise GentrainError(
        f"{path}: column {column!r} is {kind}; expected encoded image bytes or text"
    )
