"""One entry point for every trainer: iteration budget, checkpoints, exact resume, progress and loss logging.

Exact resume rests on three things restored together from the latest checkpoint: the engine's counters (ignite
state dict), the global RNG states (`RNGState`) and the data order (`ResumableSampler`, positioned from the
counters at each epoch start). A run killed after checkpoint ``k`` and resumed replays iterations ``k+1..`` with the
same batches and random draws as an uninterrupted run (bit-identical on CPU as far as the CPU computation itself
repeats bit for bit between launches, which multi-process gloo runs do not always do: see ``tests/test_multi_gpu.py``;
on GPU up to non-deterministic kernels).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from ignite.utils import setup_logger
from monai.handlers import StatsHandler, TensorBoardStatsHandler

from synthcp3d.engines.checkpoint import (
    CHECKPOINT_RE,
    RNGState,
    attach_checkpointing,
    find_latest_checkpoint,
    load_checkpoint,
)
from synthcp3d.engines.sampling import attach_resumable_sampler
from synthcp3d.engines.workflow import losses_of
from synthcp3d.errors import SynthCPInputError

__all__ = ["run_training", "STATS_LOGGER"]

logger = logging.getLogger(__name__)

#: name of the logger the loss lines go to (rank 0 only).
STATS_LOGGER = "synthcp3d.train"


def _attach_logging(trainer: Engine, log_every: int, progress: bool, tensorboard_dir: str | os.PathLike | None) -> None:
    if progress:
        ProgressBar(persist=False).attach(trainer, output_transform=losses_of)
    if log_every > 0:
        setup_logger(STATS_LOGGER, level=logging.INFO)
        StatsHandler(
            name=STATS_LOGGER,
            iteration_log=lambda engine, _: engine.state.iteration % log_every == 0,
            output_transform=losses_of,
            tag_name="loss",
        ).attach(trainer)
    if tensorboard_dir is not None:
        try:
            TensorBoardStatsHandler(log_dir=os.fspath(tensorboard_dir), output_transform=losses_of).attach(trainer)
            logger.info(f"TensorBoard logs in {tensorboard_dir}")
        except (ImportError, RuntimeError, AttributeError) as e:  # tensorboard is optional (not a dependency)
            warnings.warn(f"TensorBoard logging disabled: {e}")


def _remove_checkpoints(out_dir: Path) -> None:
    if idist.get_rank() == 0 and out_dir.is_dir():
        stale = sorted(p for p in out_dir.iterdir() if CHECKPOINT_RE.match(p.name))
        for path in stale:
            path.unlink()
        if stale:
            logger.info(f"resume=False: deleted {len(stale)} old checkpoint(s) in {out_dir}")
    idist.barrier()


def run_training(
    trainer: Engine,
    max_iterations: int,
    out_dir: str | os.PathLike,
    checkpoint_every: int = 1000,
    resume: bool = True,
    to_save: Mapping[str, Any] | None = None,
    n_saved: int | None = 2,
    progress: bool = True,
    log_every: int = 50,
    tensorboard_dir: str | os.PathLike | None = None,
) -> Path | None:
    """Train ``trainer`` for ``max_iterations`` iterations in total, checkpointing to ``out_dir``.

    Works the same on CPU, one GPU or under ``torchrun`` / ``idist.Parallel`` (checkpoints and logs on rank 0 only;
    every rank must reach the same ``out_dir`` to resume). Handlers attached to ``trainer`` beforehand (validation,
    early stopping, ...) keep working.

    Args:
        trainer: one of our trainers (or a MONAI workflow with ``data_loader``); its loader should come from
            `make_train_loader` for an exact mid-epoch resume.
        max_iterations: total iterations, counted across resumes.
        out_dir: folder of ``checkpoint_{iteration}.pt`` files.
        checkpoint_every: checkpoint period in iterations (a checkpoint is also written at the end).
        resume: continue from the latest checkpoint in ``out_dir`` if there is one (``False``: start over; the
            checkpoint files already in ``out_dir`` are deleted first so that none can be mistaken for this run's).
        to_save: objects to checkpoint (default: ``trainer.to_save``); the engine and RNG states are added.
        n_saved: checkpoints kept (``None``: all).
        progress: show an ignite ``ProgressBar`` (rank 0).
        log_every: log the losses every that many iterations with MONAI ``StatsHandler`` (rank 0; ``0``: never).
        tensorboard_dir: also log to TensorBoard there (needs the optional ``tensorboard`` package).

    Returns:
        the path of the last checkpoint written or loaded (``None`` if there is none).
    """
    if max_iterations < 1:
        raise SynthCPInputError(f"max_iterations must be at least 1, got {max_iterations}")
    if to_save is None:
        to_save = getattr(trainer, "to_save", None)
        if to_save is None:
            raise ValueError("pass to_save: this trainer has no 'to_save' attribute")
    reserved = {"trainer", "rng"} & set(to_save)
    if reserved:
        raise ValueError(f"to_save keys {sorted(reserved)} are reserved")
    out_dir = Path(out_dir)
    objects = {**to_save, "trainer": trainer, "rng": RNGState()}

    loader = getattr(trainer, "data_loader", None)
    if loader is not None:
        attach_resumable_sampler(trainer, loader)
    checkpointer = attach_checkpointing(trainer, objects, out_dir, checkpoint_every, n_saved)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop_at_budget(engine: Engine) -> None:
        if engine.state.iteration >= max_iterations:
            engine.terminate()

    if not resume:
        _remove_checkpoints(out_dir)
    latest = find_latest_checkpoint(out_dir) if resume else None
    if idist.get_world_size() > 1:  # every rank resumes from rank 0's choice (or none)
        chosen = idist.broadcast(str(latest) if latest is not None else "", src=0)
        latest = Path(chosen) if chosen else None
    if latest is not None:
        load_checkpoint({**objects, "checkpointer": checkpointer}, latest)
        if idist.get_rank() == 0:
            logger.info(f"resumed from {latest} at iteration {trainer.state.iteration}")
    epoch_length = trainer.state.epoch_length
    if not epoch_length:
        raise SynthCPInputError("the training data loader is empty (epoch length 0)")
    if loader is not None and hasattr(loader, "__len__") and len(loader) != epoch_length:
        warnings.warn(f"epoch length {epoch_length} differs from the loader's {len(loader)}: data changed?")
    if trainer.state.iteration >= max_iterations:
        if idist.get_rank() == 0:
            logger.info(f"{out_dir}: already trained for {trainer.state.iteration} >= {max_iterations} iterations")
        return latest
    trainer.state.max_epochs = math.ceil(max_iterations / epoch_length)

    if idist.get_rank() == 0:
        _attach_logging(trainer, log_every, progress, tensorboard_dir)
        logger.info(f"training to iteration {max_iterations}; checkpoints every {checkpoint_every} in {out_dir}")
    trainer.run()
    last = checkpointer.last_checkpoint
    return Path(last) if last is not None else latest
