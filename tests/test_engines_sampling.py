"""Resumable data order: seeded sampler with skip, distributed shards, per-sample seeded augmentation."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.data import Dataset
from monai.transforms import RandGaussianNoised

from synthcp3d.engines.sampling import (
    ReproducibleDataset,
    ResumableSampler,
    attach_resumable_sampler,
    make_train_loader,
    sample_seed,
)

DATA = list(range(10))


def test_sampler_is_seeded_per_epoch_and_skips() -> None:
    sampler = ResumableSampler(DATA, num_replicas=1, rank=0, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    assert sorted(full) == DATA and full != DATA
    again = ResumableSampler(DATA, num_replicas=1, rank=0, seed=7)
    again.set_epoch(3)
    assert list(again) == full
    again.set_epoch(4)
    assert list(again) != full
    sampler.set_start(4)
    assert list(sampler) == full[4:]
    assert len(sampler) == len(DATA)  # the epoch length does not shrink with the skip


def test_sampler_shards_cover_the_epoch_once() -> None:
    shards = []
    for rank in range(2):
        sampler = ResumableSampler(DATA, num_replicas=2, rank=rank, seed=1)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == DATA
    seeded = ResumableSampler(DATA, num_replicas=2, rank=1, seed=1, with_seed=True)
    seeded.set_epoch(2)
    pairs = list(seeded)
    assert [i for i, _ in pairs] == shards[1]
    assert len({s for _, s in pairs}) == len(pairs)  # every draw has its own seed
    assert pairs[0][1] == sample_seed(1, 2, 1)  # position 1 of the epoch: rank 1's first sample


def test_reproducible_dataset_seeds_each_sample() -> None:
    items = [{"image": torch.zeros(1, 4, 4)} for _ in range(3)]
    dataset = ReproducibleDataset(Dataset(items, RandGaussianNoised("image", prob=1.0)))
    a = dataset[(1, 123)]["image"]
    dataset[(2, 5)]  # another draw in between must not matter
    assert torch.equal(dataset[(1, 123)]["image"], a)
    assert not torch.equal(dataset[(1, 124)]["image"], a)
    assert not torch.equal(dataset[0]["image"], items[0]["image"])  # a plain index loads (and augments) as usual


def test_epoch_handler_positions_a_resumed_epoch() -> None:
    items = [{"x": torch.tensor([float(i)])} for i in range(6)]
    loader = make_train_loader(Dataset(items), batch_size=2, seed=0)  # 3 batches per epoch
    seen: list[list[float]] = []
    engine = Engine(lambda e, b: seen.append(b["x"].flatten().tolist()))
    attach_resumable_sampler(engine, loader)
    engine.run(loader, max_epochs=2)
    order = seen[:]

    seen.clear()
    resumed = Engine(lambda e, b: seen.append(b["x"].flatten().tolist()))
    attach_resumable_sampler(resumed, loader)
    resumed.load_state_dict({"iteration": 4, "epoch_length": 3, "max_epochs": 2})
    resumed.run(loader)
    assert seen == order[4:]  # the resumed epoch 2 continues with its second batch
    assert order[:3] != order[3:]  # the two epochs are shuffled differently
