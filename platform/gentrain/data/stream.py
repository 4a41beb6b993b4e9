"""One global example order for every epoch, read a block at a time.

An epoch shuffles the shards (seeded by the epoch), groups them into blocks of about
BLOCK_BYTES or BLOCK_ROWS, and shuffles the examples within each block (seeded by epoch and
block). Global batch i is the next `batch_size` examples of that order; worker `rank` trains on
its rows
[rank * b, (rank + 1) * b). The order depends on neither the number of workers nor the strategy,
and where a run stands in it (a Position) is all a checkpoint needs to resume at the next
example, at any world size. A worker holds about two blocks at a time, whatever the dataset's
size, and reads the next block and the next batches in background threads while it trains.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gentrain.data.examples import concat, split_rows, take
from gentrain.data.sources import Shard, Source
from gentrain.errors import GentrainError

BLOCK_BYTES = 32 << 20  # the shuffle buffer: how much source data a block gathers,
BLOCK_ROWS = 16_384  # or how many rows (Parquet's sizes are encoded ones: repetitive text is small)
READ_AHEAD = 2  # batches made ready ahead of the step that trains on them


@dataclass(frozen=True)
class Position:
    """Where a run stands in the global order: the next example is `offset` into block `block`
    of epoch `epoch`."""

    epoch: int = 0
    block: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Stream:
    def __init__(self, source: Source, examples, *, seed: int):
        self.source, self.examples, self.seed = source, examples, seed
        self._blocks: dict[int, list[list[Shard]]] = {}  # of the epochs in use

    def blocks(self, epoch: int) -> list[list[Shard]]:
        """The shards of each block of `epoch`."""
        if epoch not in self._blocks:
            self._blocks = {e: b for e, b in self._blocks.items() if e >= epoch - 1}
            self._blocks[epoch] = self._make_blocks(epoch)
        return self._blocks[epoch]

    def _make_blocks(self, epoch: int) -> list[list[Shard]]:
        shards = self.source.shards
        order = np.random.default_rng([self.seed, epoch]).permutation(len(shards))
        blocks, current, size, rows = [], [], 0, 0
        for index in order:
            current.append(shards[index])
            size, rows = size + shards[index].size, rows + (shards[index].rows or 0)
            if size >= BLOCK_BYTES or rows >= BLOCK_ROWS:
                blocks.append(current)
                current, size, rows = [], 0, 0
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

    def block(self, epoch: int, block: int) -> list | np.ndarray:
        """The training examples of a block, in their shuffled order."""
        items = concat([self.read(s, heldout=False)[0] for s in self.blocks(epoch)[block]])
        order = np.random.default_rng([self.seed, epoch, block, 1]).permutation(len(items))
        return take(items, order)

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
        self, *, batch_size: int, rank: int, world: int, start: Position | None = None
    ) -> Batches:
        return Batches(self, batch_size=batch_size, rank=rank, world=world, start=start)


class Batches:
    """Worker `rank`'s part of each global batch, from `start` on: next() gives (batch,
    position after it). Read ahead in background threads; close() stops them."""

    def __init__(
        self, stream: Stream, *, batch_size: int, rank: int, world: int, start: Position | None
    ):
        self.stream, self.batch_size = stream, batch_size
        self.per_worker = batch_size // world
        self.first_row = rank * self.per_worker  # where this worker's rows start in a global batch
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gentrain-block")
        self._loading: dict[tuple[int, int], Future] = {}
        self._ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(start or Position(),), daemon=True, name="gentrain-batches"
        )
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, Position]:
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

    def _produce(self, position: Position) -> None:
        try:
            while not self._stop.is_set():
                items, position = self._global_batch(position)
                mine = items[self.first_row : self.first_row + self.per_worker]
                self._put(("batch", (self.stream.examples.batch(mine), position)))
        except BaseException as err:  # the step that needs this batch raises it
            self._put(("error", err))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                return
            except queue.Full:
                pass

    def _global_batch(self, position: Position) -> tuple[list | np.ndarray, Position]:
        """The examples of the global batch at `position`, and the position after it. An epoch's
        last examples, fewer than a batch, are not trained on: the next epoch starts."""
        parts, needed, epoch_start = [], self.batch_size, position
        while needed:
            blocks = self.stream.blocks(position.epoch)
            if position.block >= len(blocks):
                if epoch_start == Position(position.epoch):
                    raise GentrainError(self._too_small(position.epoch))
                position = epoch_start = Position(position.epoch + 1)
                parts, needed = [], self.batch_size
                continue
            items = self._block(position.epoch, position.block)
            taken = items[position.offset : position.offset + needed]
            parts.append(taken)
            needed -= len(taken)
            offset = position.offset + len(taken)
            position = (
                Position(position.epoch, position.block, offset)
                if offset < len(items)
                else Position(position.epoch, position.block + 1)
            )
        return concat(parts), position

    def _block(self, epoch: int, block: int):
        """Block `block` of `epoch`; the one after it starts loading in the background."""
        after = (epoch, block + 1)
        if block + 1 >= len(self.stream.blocks(epoch)):
            after = (epoch + 1, 0)
        for key in ((epoch, block), after):
            if key not in self._loading:
                self._loading[key] = self._loader.submit(self.stream.block, *key)
        self._loading = {k: v for k, v in self._loading.items() if k >= (epoch, block)}
        return self._loading[(epoch, block)].result()

    def _too_small(self, epoch: int) -> str:
        count = sum(len(self.stream.block(epoch, b)) for b in range(len(self.stream.blocks(epoch))))
        return (
            f"data.batch_size: {self.batch_size} is more than the {count} training examples of "
            f"{self.stream.source.shards[0].name}; lower it or add data"
        )
