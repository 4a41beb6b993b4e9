"""One global example order, the same at any number of workers, read a block at a time.

The data is cut into `count` partitions: consecutive, equal shares of the shards' weight (image
rows; text bytes), in the shards' listed order; a shard on a boundary is shared, each side
training on its part of the shard's examples. Each partition goes through its share epoch after
epoch on its own: an epoch shuffles its pieces (seeded by epoch and partition), groups them into
blocks of about BLOCK_BYTES / count or BLOCK_ROWS / count, and shuffles the examples within each
block. Global batch i is, partition after partition, the next `batch_size / count` examples of
each; worker `rank` trains on rows [rank * b, (rank + 1) * b) of it, so it reads only the
partitions those rows come from. The order depends on neither the number of workers nor the
strategy, and where each partition stands in it (its Position) is all a checkpoint needs to
resume at the next example, at any world size. A worker holds about two blocks of each of its
partitions, whatever the dataset's size, and reads the next ones in background threads while it
trains.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gentrain.data.examples import concat, split_rows, take
from gentrain.data.sources import Shard, Source
from gentrain.errors import GentrainError

PARTITIONS = 16  # data.partitions' default: workers up to this many read disjoint shares
BLOCK_BYTES = 32 << 20  # the shuffle buffer, over all partitions: how much source data,
BLOCK_ROWS = 16_384  # or how many rows (Parquet's sizes are encoded ones: repetitive text is small)
READ_AHEAD = 2  # batches made ready ahead of the step that trains on them
SHARDS_KEPT = 2  # shards read and kept for the partitions that share them


@dataclass(frozen=True)
class Position:
    """Where a partition stands: its next example is `offset` into block `block` of its epoch
    `epoch`."""

    epoch: int = 0
    block: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Piece:
    """What a partition trains on of one shard: the share [start, end) of its `weight`."""

    shard: Shard
    start: int
    end: int
    weight: int

    def of(self, items):
        """This piece's part of the shard's training examples."""
        count = len(items)
        return items[count * self.start // self.weight : count * self.end // self.weight]

    def share(self, amount: int) -> float:
        return amount * (self.end - self.start) / self.weight


class Stream:
    def __init__(self, source: Source, examples, *, seed: int, partitions: int = PARTITIONS):
        self.source, self.examples, self.seed = source, examples, seed
        self.partitions = partitions
        self._pieces: dict[int, list[list[Piece]]] = {}
        self._blocks: dict[tuple[int, int, int], list[list[Piece]]] = {}

    def count(self, batch_size: int) -> int:
        """How many partitions the data is cut into for `batch_size`: each gives a global
        batch at least one example."""
        return max(1, min(self.partitions, batch_size, self._total()))

    def _total(self) -> int:
        return sum(_weight(shard, self.source.modality) for shard in self.source.shards)

    def pieces(self, count: int) -> list[list[Piece]]:
        """What each of `count` partitions trains on."""
        if count not in self._pieces:
            self._pieces[count] = self._cut(count)
        return self._pieces[count]

    def _cut(self, count: int) -> list[list[Piece]]:
        total = self._total()
        bounds = [p * total // count for p in range(count + 1)]
        parts: list[list[Piece]] = [[] for _ in range(count)]
        start, p = 0, 0
        for shard in self.source.shards:
            weight = _weight(shard, self.source.modality)
            end = start + weight
            while p < count and bounds[p] < end:  # the partitions meeting [start, end)
                low, high = max(bounds[p], start), min(bounds[p + 1], end)
                if high > low:
                    parts[p].append(Piece(shard, low - start, high - start, weight))
                if bounds[p + 1] > end:
                    break
                p += 1
            start = end
        return parts

    def blocks(self, count: int, partition: int, epoch: int) -> list[list[Piece]]:
        """The pieces of each block of `partition`'s epoch `epoch`."""
        key = (count, partition, epoch)
        if key not in self._blocks:
            self._blocks = {
                k: v for k, v in self._blocks.items() if k[:2] != key[:2] or k[2] >= epoch - 1
            }
            self._blocks[key] = self._make_blocks(count, partition, epoch)
        return self._blocks[key]

    def _make_blocks(self, count: int, partition: int, epoch: int) -> list[list[Piece]]:
        pieces = self.pieces(count)[partition]
        order = np.random.default_rng([self.seed, epoch, partition]).permutation(len(pieces))
        blocks, current, size, rows = [], [], 0.0, 0.0
        for index in order:
            piece = pieces[index]
            current.append(piece)
            size += piece.share(piece.shard.size)
            rows += piece.share(piece.shard.rows or 0)
            if size >= BLOCK_BYTES / count or rows >= BLOCK_ROWS / count:
                blocks.append(current)
                current, size, rows = [], 0.0, 0.0
        return blocks + ([current] if current else [])

    def read(self, shard: Shard, *, train: bool = True, heldout: bool = True) -> tuple:
        """(training, held-out) examples of one shard; a part not asked for is not made (left
        empty): tokenizing or decoding is the costly step."""
        rows = self.source.read(shard)
        names = self.source.row_names(shard, len(rows))
        trained, held = split_rows(rows, names, self.source.heldout_rows(shard, rows))
        return (
            self.examples.from_rows(trained) if train else [],
            self.examples.from_rows(held) if heldout else [],
        )

    def block(self, count: int, partition: int, epoch: int, block: int, read=None):
        """The training examples of a block, in their shuffled order; `read(shard)` gives a
        shard's training examples."""
        read = read or (lambda shard: self.read(shard, heldout=False)[0])
        pieces = self.blocks(count, partition, epoch)[block]
        items = concat([piece.of(read(piece.shard)) for piece in pieces])
        seeds = [self.seed, epoch, partition, block, 1]
        return take(items, np.random.default_rng(seeds).permutation(len(items)))

    def heldout(self, limit: int) -> torch.Tensor:
        """The first `limit` held-out examples, reading shards in their listed order only as far
        as needed (evaluation reads a fixed number, not the whole held-out split)."""
        parts, count = [], 0
        for shard in self.source.shards:
            part = self.read(shard, train=False)[1][: limit - count]
            parts.append(part)
            count += len(part)
            if count >= limit:
                break
        items = concat(parts)
        if not len(items):
            raise GentrainError(
                f"data.source: no held-out examples in {self.source.shards[0].name}"
                f"{' and the rest' if len(self.source.shards) > 1 else ''}: add data"
            )
        return self.examples.batch(items)

    def everything(self) -> torch.Tensor:
        """Every training example in the shards' listed order (small data: tests, benchmarks)."""
        shards = self.source.shards
        return self.examples.batch(concat([self.read(s, heldout=False)[0] for s in shards]))

    def batches(
        self, *, batch_size: int, rank: int, world: int, start: Sequence[Position] | None = None
    ) -> Batches:
        return Batches(self, batch_size=batch_size, rank=rank, world=world, start=start)


def _weight(shard: Shard, modality: str) -> int:
    """What partitions share equally: an image shard's rows, a text shard's bytes (its
    examples, token windows, are known only once it is read)."""
    if modality == "image" and shard.rows is not None:
        return shard.rows
    return shard.size


class Batches:
    """Worker `rank`'s part of each global batch, from `start` (each partition's position; a
    checkpoint's count of partitions is kept) on: next() gives (batch, the positions after it
    of the partitions this worker reads). Read ahead in background threads; close() stops
    them."""

    def __init__(
        self,
        stream: Stream,
        *,
        batch_size: int,
        rank: int,
        world: int,
        start: Sequence[Position] | None,
    ):
        self.stream = stream
        self.count = len(start) if start else stream.count(batch_size)
        self.per_worker = batch_size // world
        self.first_row = rank * self.per_worker  # where this worker's rows start in a global batch
        last_row = self.first_row + self.per_worker
        # partition p gives rows [bounds[p], bounds[p + 1]) of every global batch
        self.bounds = [p * batch_size // self.count for p in range(self.count + 1)]
        self.mine = [
            p
            for p in range(self.count)
            if self.bounds[p] < last_row and self.bounds[p + 1] > self.first_row
        ]
        start = start or [Position()] * self.count
        self.positions = {p: start[p] for p in self.mine}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gentrain-block")
        self._kept: OrderedDict[str, list | np.ndarray] = OrderedDict()  # loader thread only
        self._loading: dict[tuple[int, int, int], Future] = {}
        self._ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True, name="gentrain-batches")
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, dict[int, Position]]:
        kind, value = self._ready.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._ready.get(timeout=0.1)
            except queue.Empty:
                pass
        self._loader.shutdown(wait=True, cancel_futures=True)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                parts = []
                for p in self.mine:
                    wanted = self.bounds[p + 1] - self.bounds[p]
                    items, self.positions[p] = self._take(p, self.positions[p], wanted)
                    low = max(self.first_row, self.bounds[p]) - self.bounds[p]
                    high = min(self.first_row + self.per_worker, self.bounds[p + 1])
                    parts.append(items[low : high - self.bounds[p]])
                batch = self.stream.examples.batch(concat(parts))
                self._put(("batch", (batch, dict(self.positions))))
        except BaseException as err:  # the step that needs this batch raises it
            self._put(("error", err))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                return
            except queue.Full:
                pass

    def _take(self, p: int, position: Position, wanted: int) -> tuple:
        """Partition `p`'s next `wanted` examples from `position`, and the position after them;
        at the end of its epoch a partition goes on into its next one."""
        parts, taken_this_epoch, whole_epoch = [], 0, position == Position(position.epoch)
        while wanted:
            blocks = self.stream.blocks(self.count, p, position.epoch)
            if position.block >= len(blocks):
                if whole_epoch and not taken_this_epoch:
                    raise GentrainError(self._empty(p))
                position, taken_this_epoch, whole_epoch = Position(position.epoch + 1), 0, True
                continue
            items = self._block(p, position.epoch, position.block)
            taken = items[position.offset : position.offset + wanted]
            parts.append(taken)
            wanted -= len(taken)
            taken_this_epoch += len(taken)
            offset = position.offset + len(taken)
            position = (
                Position(position.epoch, position.block, offset)
                if offset < len(items)
                else Position(position.epoch, position.block + 1)
            )
        return concat(parts), position

    def _block(self, p: int, epoch: int, block: int):
        """Block `block` of partition `p`'s epoch `epoch`; its next one starts loading in the
        background."""
        after = (p, epoch, block + 1)
        if block + 1 >= len(self.stream.blocks(self.count, p, epoch)):
            after = (p, epoch + 1, 0)
        for key in ((p, epoch, block), after):
            if key not in self._loading:
                self._loading[key] = self._loader.submit(
                    self.stream.block, self.count, *key, read=self._training
                )
        self._loading = {
            k: v for k, v in self._loading.items() if k[0] != p or k[1:] >= (epoch, block)
        }
        return self._loading[(p, epoch, block)].result()

    def _training(self, shard: Shard) -> list | np.ndarray:
        """A shard's training examples; the last few are kept, as partitions share shards."""
        if shard.id not in self._kept:
            self._kept[shard.id] = self.stream.read(shard, heldout=False)[0]
            while len(self._kept) > SHARDS_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(shard.id)
        return self._kept[shard.id]

    def _empty(self, p: int) -> str:
        pieces = self.stream.pieces(self.count)[p]
        where = pieces[0].shard.name if pieces else self.stream.source.shards[0].name
        return (
            f"data.partitions: part {p + 1} of the {self.count} the data is cut into ({where}"
            f"{' and on' if len(pieces) > 1 else ''}) holds no training examples; lower "
            "data.partitions or add data"
        )
