"""Atomic, resumable checkpoints: networks, optimizers, schedulers, engine counters and RNG states in one file.

A checkpoint is ``out_dir/checkpoint_{iteration}.pt``, written by ignite ``Checkpoint`` + ``DiskSaver(atomic=True)``
(temporary file, then rename) on rank 0 only, and loadable with ``torch.load(..., weights_only=True)``: every saved
value is a tensor, number, string or container of them (the RNG states are converted to tensors for that).
The checkpointer saves its own list of files (``include_self``), so a resumed run keeps rotating the same files.
"""

from __future__ import annotations

import logging
import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from synthcp3d.engines.distributed import unwrap
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_torch_save

__all__ = [
    "RNGState",
    "attach_checkpointing",
    "find_latest_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "CHECKPOINT_PREFIX",
    "CHECKPOINT_RE",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)\.pt$")


def _local_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_local_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(int(v) for v in py_state["internal"].tolist()), py_state["gauss"]))
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn("checkpoint holds CUDA RNG states for another number of GPUs: CUDA RNG not restored")


class RNGState:
    """Stateful handle on the global RNGs (torch, numpy, python, CUDA when present) of every rank.

    ``state_dict`` gathers each rank's states (a collective: every rank calls it, as ignite ``Checkpoint`` does);
    ``load_state_dict`` restores this rank's entry. With another world size than at saving time, rank ``r`` takes
    entry ``r mod saved_world_size`` (the run is then reproducible but not identical to an uninterrupted one).
    """

    def state_dict(self) -> dict[str, Any]:
        local = _local_rng_state()
        ranks = list(idist.all_gather(local)) if idist.get_world_size() > 1 else [local]
        return {"world_size": len(ranks), "ranks": ranks}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        ranks = state_dict["ranks"]
        rank, world_size = idist.get_rank(), idist.get_world_size()
        if len(ranks) != world_size:
            warnings.warn(f"RNG states saved by {len(ranks)} process(es), restored into {world_size}")
        _set_local_rng_state(ranks[rank % len(ranks)])


def attach_checkpointing(
    engine: Engine, to_save: Mapping[str, Any], out_dir: str | os.PathLike, every: int, n_saved: int | None = 2
) -> Checkpoint:
    """Save ``to_save`` every ``every`` iterations and when the run completes (rank 0, atomic).

    Args:
        engine: the trainer.
        to_save: objects with ``state_dict``/``load_state_dict`` (networks, optimizers, schedulers, the engine,
            an `RNGState`); DDP-wrapped networks are saved unwrapped.
        out_dir: folder of ``checkpoint_{iteration}.pt`` files.
        every: period in iterations (``<= 0``: only at the end).
        n_saved: how many recent checkpoints to keep (``None``: all).

    Returns:
        the ignite ``Checkpoint`` handler (pass it as ``"checkpointer"`` when loading, to keep rotating files).
    """
    if "checkpointer" in to_save:
        raise ValueError("'checkpointer' is reserved for the checkpoint handler itself")
    saver = DiskSaver(os.fspath(out_dir), atomic=True, create_dir=True, require_empty=False)
    handler = Checkpoint(
        dict(to_save),
        saver,
        filename_prefix="",
        n_saved=n_saved,
        global_step_transform=lambda eng, _: eng.state.iteration,
        filename_pattern=f"{CHECKPOINT_PREFIX}_{{global_step}}.{{ext}}",
        include_self=True,
    )
    saved_at: list[int] = []

    def save(eng: Engine) -> None:
        if saved_at and saved_at[-1] == eng.state.iteration:
            return  # the final save right after a periodic one would rewrite an identical file
        handler(eng)
        saved_at.append(eng.state.iteration)
        if idist.get_rank() == 0:
            logger.info(f"saved {Path(out_dir) / handler.last_checkpoint}")

    if every > 0:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), save)
    engine.add_event_handler(Events.COMPLETED, save)
    return handler


def find_latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """Return the ``checkpoint_{iteration}.pt`` in ``out_dir`` with the highest iteration, or ``None``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(to_load: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """Load ``path`` (``weights_only=True``, on CPU) into the objects of ``to_load``; return the raw checkpoint.

    Raises:
        SynthCPInputError: the file is missing, unreadable, or lacks one of the keys of ``to_load``.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one clear sentence instead of an unpickling trace
        raise SynthCPInputError(f"checkpoint {path} cannot be read as a weights-only torch file ({e})") from e
    missing = sorted(set(to_load) - set(checkpoint))
    if missing:
        raise SynthCPInputError(f"checkpoint {path} lacks {missing}; it holds {sorted(checkpoint)}")
    Checkpoint.load_objects(to_load=dict(to_load), checkpoint=checkpoint)
    return checkpoint


def save_weights(modules: Mapping[str, nn.Module], path: str | os.PathLike) -> Path:
    """Atomically save ``{name: state_dict}`` of (unwrapped) networks to ``path``, on rank 0 only."""
    path = Path(path)
    if idist.get_rank() == 0:
        atomic_torch_save({name: unwrap(m).state_dict() for name, m in modules.items()}, path)
        logger.info(f"saved weights {sorted(modules)} to {path}")
    return path


def load_weights(modules: Mapping[str, nn.Module], path: str | os.PathLike, strict: bool = True) -> None:
    """Load weights written by `save_weights` (or a checkpoint) into ``modules`` by name (``weights_only=True``)."""
    checkpoint = load_checkpoint({}, path)
    missing = sorted(set(modules) - set(checkpoint))
    if missing:
        raise SynthCPInputError(f"weights file {path} lacks {missing}; it holds {sorted(checkpoint)}")
    for name, module in modules.items():
        unwrap(module).load_state_dict(checkpoint[name], strict=strict)
