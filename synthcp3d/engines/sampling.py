"""Data order that survives a resume: a seeded, skippable sampler and per-sample seeded augmentation.

Why not ignite's ``DeterministicEngine``: MONAI's workflows (``SupervisedTrainer`` and our ``Trainer`` subclasses)
derive from the plain ignite ``Engine``, which on a mid-epoch resume starts a *fresh* data iterator and merely counts
the already-done iterations: the resumed epoch would replay the first batches instead of the remaining ones. The
pieces here make the order a pure function of ``(seed, epoch, position)``:

- `ResumableSampler` is a ``DistributedSampler`` (so ``idist.auto_dataloader`` and MONAI use it unwrapped): its
  permutation is seeded by ``seed + epoch`` and it can start ``start`` samples into the epoch without loading them;
- `attach_resumable_sampler` sets epoch and start at every ``EPOCH_STARTED`` from the engine's own counters, and
  reseeds the loader's generator so creating a data iterator never consumes the global RNG (the global RNG, saved in
  the checkpoint, then only drives the model: dropout, noise);
- `ReproducibleDataset` reseeds a MONAI dataset's random transforms per sample, so augmentation does not depend on
  which worker loads a sample or on how many samples that worker loaded before (both change across a resume).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import list_data_collate
from monai.transforms import Randomizable
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from synthcp3d.errors import SynthCPInputError

__all__ = ["ResumableSampler", "ReproducibleDataset", "attach_resumable_sampler", "make_train_loader", "sample_seed"]

logger = logging.getLogger(__name__)

_SEED_MOD = 2**31 - 1


def sample_seed(seed: int, epoch: int, position: int, stream: int = 0) -> int:
    """A 31-bit seed that is a pure function of ``(seed, epoch, position, stream)`` (numpy ``SeedSequence`` hash).

    All arguments must be non-negative; ``stream`` separates independent uses (0: samples, 1: loader generator).
    """
    return int(np.random.SeedSequence([seed, epoch, position, stream]).generate_state(1)[0]) % _SEED_MOD


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first ``start`` samples of this rank's share of the epoch.

    Args:
        dataset: map-style dataset (only its length is used).
        num_replicas: world size (default: ``idist.get_world_size()``).
        rank: this process' rank (default: ``idist.get_rank()``).
        shuffle: permute with a generator seeded by ``seed + epoch`` (as ``DistributedSampler``).
        seed: base seed, identical on every rank.
        drop_last: as ``DistributedSampler``.
        with_seed: yield ``(index, sample_seed)`` pairs for a `ReproducibleDataset` instead of plain indices.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        with_seed: bool = False,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
        rank = idist.get_rank() if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.with_seed = with_seed
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share in the next iteration over the sampler."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = start

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())
        # The position counts over the whole epoch (all ranks), so each sample draw has a unique seed.
        positions = range(self.rank, self.total_size, self.num_replicas)
        items = zip(indices, positions)
        out = [
            (index, sample_seed(self.seed, self.epoch, pos)) if self.with_seed else index
            for i, (index, pos) in enumerate(items)
            if i >= self.start
        ]
        return iter(out)


class ReproducibleDataset(Dataset):
    """Wrap a dataset whose ``transform`` is a MONAI (``Randomizable``) transform; reseed it per sample.

    Indexed by ``(index, seed)`` (what `ResumableSampler(with_seed=True)` yields) the transform's random state is
    set from ``seed`` before loading item ``index``; a plain integer index loads the item unchanged.

    Args:
        dataset: e.g. ``monai.data.Dataset`` / ``CacheDataset`` (anything with ``__getitem__``, ``__len__`` and an
            optional ``transform`` attribute).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            transform = getattr(self.dataset, "transform", None)
            if isinstance(transform, Randomizable):
                transform.set_random_state(seed=seed)
            return self.dataset[index]
        return self.dataset[key]


def make_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    reproducible_augmentation: bool = True,
    **kwargs: Any,
) -> DataLoader:
    """A training loader for `run_training`: `ResumableSampler`, seeded generator, distributed-aware.

    ``idist.auto_dataloader`` splits ``batch_size`` (the global batch) and ``num_workers`` over the processes.

    Args:
        dataset: map-style dataset of MONAI-style dicts (``"image"``, ``"label"``, ...).
        batch_size: global batch size (divided by the world size under ``torchrun`` / ``idist.Parallel``: a multiple
            of it, so that a step of N processes sees the samples of a 1-process step).
        seed: seeds the order and, with ``reproducible_augmentation``, every sample's random transforms.
        reproducible_augmentation: wrap ``dataset`` in `ReproducibleDataset` (seed each sample's augmentation).
        kwargs: more ``DataLoader`` arguments (default ``collate_fn``: MONAI ``list_data_collate``).
    """
    world_size = idist.get_world_size()
    if batch_size % world_size:
        raise SynthCPInputError(f"batch_size {batch_size} (the global batch) is not a multiple of the {world_size} "
                                "processes that share it")
    if reproducible_augmentation and not isinstance(dataset, ReproducibleDataset):
        dataset = ReproducibleDataset(dataset)
    sampler = ResumableSampler(
        dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, with_seed=isinstance(dataset, ReproducibleDataset)
    )
    kwargs.setdefault("collate_fn", list_data_collate)
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return idist.auto_dataloader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last, **kwargs
    )


def attach_resumable_sampler(engine: Engine, loader: Any, seed: int | None = None) -> bool:
    """At every ``EPOCH_STARTED`` set the sampler's epoch and skip what a resumed epoch already consumed.

    Also gives the loader a generator reseeded by ``(seed, epoch)``: creating a ``DataLoader`` iterator otherwise
    draws its worker base seed from the global torch RNG, at a point that differs between an uninterrupted and a
    resumed run.

    Args:
        engine: the trainer iterating over ``loader``.
        loader: its data loader.
        seed: seeds the loader generator (default: the sampler's seed, else 0).

    Returns:
        ``True`` when ``loader`` uses a `ResumableSampler` (exact resume); ``False`` otherwise (a warning is logged:
        a resumed epoch then restarts the loader's order).
    """
    sampler = getattr(loader, "sampler", None)
    if seed is None:
        seed = sampler.seed if isinstance(sampler, ResumableSampler) else 0
    if isinstance(loader, DataLoader) and loader.generator is None:
        loader.generator = torch.Generator()
    if not isinstance(sampler, ResumableSampler):
        logger.warning("the training loader has no ResumableSampler: a mid-epoch resume will not replay its order")

    @engine.on(Events.EPOCH_STARTED)
    def _set_epoch(engine: Engine) -> None:
        epoch = engine.state.epoch
        if isinstance(loader, DataLoader) and loader.generator is not None:
            loader.generator.manual_seed(sample_seed(seed, epoch, 0, stream=1))
        if isinstance(sampler, ResumableSampler):
            sampler.set_epoch(epoch)
            done = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
            sampler.set_start(done * (loader.batch_size or 1))

    return isinstance(sampler, ResumableSampler)

