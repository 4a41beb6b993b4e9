import torch

from gentrain.data import load_dataset
from gentrain.data.batches import ShardedBatches, augment
from gentrain.data.digits import load_digits


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


def test_each_worker_sees_its_own_part_of_every_epoch():
    examples = torch.arange(40).float()[:, None]
    shards = [ShardedBatches(examples, batch_size=4, rank=r, world=2, seed=7) for r in range(2)]
    per_epoch = shards[0].per_epoch
    assert per_epoch == 5
    seen = [torch.cat([s.at(step) for step in range(1, per_epoch + 1)]) for s in shards]
    all_seen = torch.cat(seen).flatten().tolist()
    assert sorted(all_seen) == list(range(40)), "one epoch covers the data once across workers"
    assert not set(seen[0].flatten().tolist()) & set(seen[1].flatten().tolist())
    next_epoch = torch.cat([shards[0].at(step) for step in range(per_epoch + 1, 2 * per_epoch + 1)])
    assert not torch.equal(next_epoch, seen[0]), "epochs are reshuffled"


def test_batches_are_a_pure_function_of_the_step():
    examples = load_dataset("builtin:digits").train
    a = ShardedBatches(examples, batch_size=16, rank=1, world=2, seed=3)
    b = ShardedBatches(examples, batch_size=16, rank=1, world=2, seed=3)
    for step in (1, 17, 500):
        assert torch.equal(a.at(step), b.at(step))
    other_seed = ShardedBatches(examples, batch_size=16, rank=1, world=2, seed=4)
    assert not torch.equal(a.at(1), other_seed.at(1))


def test_the_global_batch_is_the_same_for_any_number_of_workers():
    examples = torch.arange(96)[:, None]
    whole = ShardedBatches(examples, batch_size=12, rank=0, world=1, seed=5)
    for world in (2, 3, 4):
        parts = [
            ShardedBatches(examples, batch_size=12 // world, rank=r, world=world, seed=5)
            for r in range(world)
        ]
        for step in (1, 5, 9):  # 8 steps an epoch: 9 is in the second
            assert torch.equal(torch.cat([p.at(step) for p in parts]), whole.at(step))


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
