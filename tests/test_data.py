import numpy as np
import pytest
import torch

from gentrain.data import stream
from gentrain.data.augment import augment
from gentrain.data.digits import load_digits
from gentrain.data.examples import ImageExamples
from gentrain.data.sources import Shard, Source
from gentrain.data.stream import Stream
from gentrain.errors import GentrainError


def test_digits_split_is_deterministic_disjoint_and_scaled():
    train, train_labels = load_digits("train")
    heldout, _ = load_digits("heldout")
    assert train.shape[1:] == (1, 8, 8) and len(train) + len(heldout) == 1797
    assert train.min() == -1 and train.max() == 1
    assert torch.equal(load_digits("train")[0], train)
    assert set(train_labels.tolist()) == set(range(10))
    flat_train = {tuple(x.flatten().tolist()) for x in train}
    overlap = sum(tuple(x.flatten().tolist()) in flat_train for x in heldout)
    assert overlap < 10, "held-out images are not the training images (a few digits repeat exactly)"


class Numbered(Source):
    """`shards` shards of `rows` rows each; row values are their global ids. Each shard is a
    third of a block, so that an epoch has several blocks."""

    modality = "image"

    def __init__(self, shards: int, rows: int, empty: tuple[int, ...] = ()):
        self.rows, self.empty = rows, empty
        self.shards = [
            Shard(f"part-{i}", f"part-{i}", i, stream.BLOCK_BYTES // 3 + 1, rows)
            for i in range(shards)
        ]
        self.reads: list[str] = []

    def read(self, shard):
        self.reads.append(shard.name)
        first = shard.part * self.rows
        rows = 0 if shard.part in self.empty else self.rows
        return [np.array([first + i], dtype=np.float32) for i in range(rows)]


def _stream(shards=7, rows=10, seed=5, partitions=4, empty=()) -> Stream:
    source = Numbered(shards, rows, empty)
    return Stream(source, ImageExamples(channels=1, size=None), seed=seed, partitions=partitions)


def _ids(batch: torch.Tensor) -> list[int]:
    return [int(x) for x in batch.flatten()]


def _global_batches(world: int, steps: int, start=None, batch_size=12, **stream_args):
    """Each step's global batch (the workers' parts in rank order), every partition's position
    after it (each worker knows those it reads), and each worker's stream."""
    streams = [_stream(**stream_args) for _ in range(world)]  # one per worker, as in a run
    parts = [
        s.batches(batch_size=batch_size, rank=r, world=world, start=start)
        for r, s in enumerate(streams)
    ]
    batches, positions = [], []
    for _ in range(steps):
        taken = [next(p) for p in parts]
        batches.append(sum((_ids(batch) for batch, _ in taken), []))
        known: dict = {}
        for _, mine in taken:
            assert all(known.get(p, at) == at for p, at in mine.items()), "one place for each"
            known.update(mine)
        positions.append([known[p] for p in range(len(known))])
    for p in parts:
        p.close()
    return batches, positions, streams


def _partition_sizes(stream: Stream, count: int) -> list[int]:
    return [
        sum(len(piece.of(stream.read(piece.shard, heldout=False)[0])) for piece in pieces)
        for pieces in stream.pieces(count)
    ]


def test_each_partition_trains_on_each_of_its_examples_once_an_epoch_in_shuffled_blocks():
    stream = _stream()
    training = _ids(stream.everything())
    sizes = _partition_sizes(stream, 4)
    assert sum(sizes) == len(training), "each example in one partition"
    assert max(sizes) - min(sizes) <= 5, "equal shares of rows, less the held-out ones drawn"
    epoch = -(-max(sizes) // 3)  # batches (3 examples of each partition) to see them all
    batches, positions, _ = _global_batches(world=2, steps=2 * epoch)
    first = sum(batches[: min(sizes) // 3], [])
    assert len(set(first)) == len(first), "none twice in an epoch"
    assert set(sum(batches[:epoch], [])) == set(training), "every one, none left out"
    assert all(position.epoch >= 1 for position in positions[epoch]), "each goes on to the next"
    assert sum(batches[epoch:], [])[: len(first)] != first, "the next epoch is reshuffled"
    heldout = set(_ids(stream.heldout(limit=1000)))
    assert heldout and not heldout & set(training), "a row is held out or trained on, not both"


def test_the_global_batch_is_the_same_for_any_number_of_workers():
    whole = _global_batches(world=1, steps=9)[0]
    for world in (2, 3, 4):
        assert _global_batches(world=world, steps=9)[0] == whole


def test_each_worker_reads_only_the_shards_its_rows_come_from():
    _, _, streams = _global_batches(world=2, steps=6, shards=8, batch_size=8)
    reads = [set(s.source.reads) for s in streams]
    assert reads[0] == {f"part-{i}" for i in range(4)}, reads
    assert reads[1] == {f"part-{i}" for i in range(4, 8)}, reads
    _, _, streams = _global_batches(world=4, steps=3, shards=8, batch_size=8)
    assert all(len(set(s.source.reads)) == 2 for s in streams), "a quarter each"


def test_a_resume_at_any_world_size_continues_at_the_next_example():
    uninterrupted, positions, _ = _global_batches(world=2, steps=8)
    stopped_at = positions[2]  # mid-block, mid-epoch
    assert any(position.offset > 0 for position in stopped_at)
    for world in (1, 3):
        resumed = _global_batches(world=world, steps=5, start=stopped_at)[0]
        assert resumed == uninterrupted[3:], world


def test_batches_depend_on_the_seed():
    assert _global_batches(world=1, steps=2, seed=1)[0] != _global_batches(world=1, steps=2)[0]


def test_evaluation_reads_only_the_shards_it_needs():
    stream = _stream(shards=50)
    assert len(stream.heldout(limit=2)) == 2
    assert len(stream.source.reads) < 10, stream.source.reads


def test_a_partition_without_training_examples_is_a_clear_error():
    batches = _stream(shards=2, empty=(1,), partitions=2).batches(batch_size=4, rank=0, world=1)
    with pytest.raises(GentrainError, match=r"data.partitions: part 2 of the 2 .*\(part-1\)"):
        next(batches)
    batches.close()


def test_augmentations_keep_shape_and_range_and_change_images():
    images = load_digits("train")[0][:64]
    torch.manual_seed(0)
    for names in (
        ("hflip",),
        ("random_crop",),
        ("color_jitter",),
        ("noise",),
        ("hflip", "random_crop", "color_jitter", "noise"),
    ):
        out = augment(images, names)
        assert out.shape == images.shape
        assert out.min() >= -1 and out.max() <= 1
        assert not torch.equal(out, images), names
    assert torch.equal(augment(images, ()), images)
