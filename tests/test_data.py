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

    def __init__(self, shards: int, rows: int):
        self.rows = rows
        self.shards = [
            Shard(f"part-{i}", f"part-{i}", i, stream.BLOCK_BYTES // 3 + 1, rows)
            for i in range(shards)
        ]
        self.reads: list[str] = []

    def read(self, shard):
        self.reads.append(shard.name)
        first = shard.part * self.rows
        return [np.array([first + i], dtype=np.float32) for i in range(self.rows)]


def _stream(shards=7, rows=10, seed=5) -> Stream:
    return Stream(Numbered(shards, rows), ImageExamples(channels=1, size=None), seed=seed)


def _ids(batch: torch.Tensor) -> list[int]:
    return [int(x) for x in batch.flatten()]


def _global_batches(stream: Stream, *, world: int, steps: int, start=None, batch_size=12):
    """Each step's global batch (the workers' parts in rank order), and the position after."""
    parts = [
        stream.batches(batch_size=batch_size, rank=r, world=world, start=start)
        for r in range(world)
    ]
    batches, positions = [], []
    for _ in range(steps):
        taken = [next(p) for p in parts]
        assert len({position for _, position in taken}) == 1, "every rank stands at one place"
        batches.append(sum((_ids(batch) for batch, _ in taken), []))
        positions.append(taken[0][1])
    for p in parts:
        p.close()
    return batches, positions


def test_an_epoch_trains_on_every_training_example_once_in_shuffled_blocks():
    stream = _stream()
    training = _ids(stream.everything())
    per_epoch = len(training) // 12
    batches, positions = _global_batches(stream, world=2, steps=2 * per_epoch)
    first, second = batches[:per_epoch], batches[per_epoch:]
    seen = sum(first, [])
    assert len(set(seen)) == len(seen) == per_epoch * 12, "none twice in an epoch"
    assert set(seen) <= set(training) and len(training) - len(seen) < 12, "only the last remainder"
    assert len(stream.blocks(0)) == 3, "7 shards, a third of a block each"
    assert positions[per_epoch].epoch == 1 and second != first, "the next epoch is reshuffled"
    heldout = set(_ids(stream.heldout(limit=1000)))
    assert heldout and not heldout & set(training), "a row is held out or trained on, not both"


def test_the_global_batch_is_the_same_for_any_number_of_workers():
    whole, _ = _global_batches(_stream(), world=1, steps=9)
    for world in (2, 3, 4):
        assert _global_batches(_stream(), world=world, steps=9)[0] == whole


def test_a_resume_at_any_world_size_continues_at_the_next_example():
    uninterrupted, positions = _global_batches(_stream(), world=2, steps=8)
    stopped_at = positions[2]  # mid-block, mid-epoch
    assert stopped_at.offset > 0
    for world in (1, 3):
        resumed, _ = _global_batches(_stream(), world=world, steps=5, start=stopped_at)
        assert resumed == uninterrupted[3:], world


def test_batches_depend_on_the_seed():
    assert (
        _global_batches(_stream(seed=1), world=1, steps=2)[0]
        != _global_batches(_stream(seed=2), world=1, steps=2)[0]
    )


def test_evaluation_reads_only_the_shards_it_needs():
    stream = _stream(shards=50)
    assert len(stream.heldout(limit=2)) == 2
    assert len(stream.source.reads) < 10, stream.source.reads


def test_a_dataset_smaller_than_one_global_batch_is_a_clear_error():
    batches = _stream(shards=1, rows=8).batches(batch_size=12, rank=0, world=1)
    with pytest.raises(GentrainError, match="data.batch_size: 12 is more than the . training"):
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
