"""What every study's stage functions share, whatever the study or ``spatial_dims``: output layout, done-markers,
CSV rows (how a trained network is kept and loaded back: :mod:`synthcp3d.workflows.trained`).

A study's settings dataclass derives from :class:`StudyBase`; a stage function is decorated with :func:`study_stage`,
which writes ``<output_dir>/<stage>/done.json`` atomically as the stage's last act (the marker ``synthcp run`` checks).

Staleness (:mod:`synthcp3d.workflows.staleness`): a ``done.json`` records the stage's inputs (settings, the data set
by its content, the run ids of the stages it reads); a stage is skipped only when they equal the current ones, and a
stale stage reruns as with ``force``. A run folder moved or copied with its data stays up to date; the files that
record paths for later stages are read with :meth:`StudyBase.resolve_paths`. JSON records of settings and network
factories: :mod:`synthcp3d.workflows.records`.

Distributed runs (``torchrun`` with a bundle's ``configs/multi_gpu_train.yaml``, or ``synthcp run --nproc N``): a
training stage runs on every rank, building its networks identically and wrapping them with
:meth:`StudyBase.prepare_network` (DDP broadcasts rank 0's weights); its loaders split each global batch over the
ranks (`make_train_loader`). Rank 0 alone writes files (weights, specs, JSON, predictions, the done marker); work
that is not training (predicting, fitting regressors) runs on rank 0 with :func:`on_main_process` while the other
ranks wait. Any other stage (prepare, evaluate, inference) runs on rank 0 alone.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import ignite.distributed as idist
import numpy as np
import torch

from synthcp3d.engines.distributed import prepare_network
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json, atomic_save_text
from synthcp3d.workflows.records import describe_factory, to_json
from synthcp3d.workflows.staleness import (
    DONE,
    configured_stale_reason,
    dataset_listing,
    marker_run_id,
    move_recorded_paths,
    stage_inputs,
    stale_reason,
)

__all__ = [
    "DONE",
    "StudyBase",
    "study_stage",
    "stage_inputs",
    "stale_reason",
    "configured_stale_reason",
    "dataset_listing",
    "marker_run_id",
    "on_main_process",
    "to_json",
    "describe_factory",
    "case_seed",
    "require_file",
    "write_csv_rows",
    "nanmean",
    "fmt",
]

logger = logging.getLogger(__name__)



@dataclass
class StudyBase:
    """Settings every study has; subclasses add their own fields (all with defaults).

    Attributes:
        dataset_dir: the data set folder.
        output_dir: every stage writes below it; final weights go to ``output_dir/models``.
        device: "cpu", "cuda" or "cuda:N".
        seed: seeds the split, the folds, every training run.
        force: rerun a stage even if its ``done.json`` is up to date.
        progress: progress bars.
        settings_name: "demo" or "full" (printed in the reports).
        checkpoint_every: checkpoint period (iterations) of every training run.
        num_workers: data loader workers.
        amp: bf16 autocast on CUDA in every training run and in whole-volume segmentation (ignored on the CPU).
            Like ``device`` it changes the arithmetic, not what a stage computes: a run-time field.
    """

    dataset_dir: str
    output_dir: str
    device: str = "cpu"
    seed: int = 0
    force: bool = False
    progress: bool = True
    settings_name: str = "full"
    checkpoint_every: int = 1000
    num_workers: int = 0
    amp: bool = False

    #: fields that change how a stage runs, not what it computes: left out of the settings a ``done.json`` records,
    #: so changing them reruns nothing (a subclass adds its own, e.g. a cache size)
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "output_dir", "device", "force", "progress", "checkpoint_every", "num_workers", "amp",
    )
    #: fields that only say where the data set lies: left out of the recorded settings as well, the data set being
    #: recorded by its content instead (:func:`dataset_listing`), so that a run folder moved or copied with its data,
    #: or the same data reached by another path, reruns nothing (``output_dir`` is among ``runtime_fields``)
    location_fields: ClassVar[tuple[str, ...]] = ("dataset_dir",)
    #: fields only some stages read, with those stages: left out of the other stages' recorded settings, so that
    #: changing an evaluation setting (a threshold, a number of MC-Dropout passes) reruns the stages that read it,
    #: not the training before them; a field not listed counts for every stage (tests/test_stage_fields.py checks
    #: each listing against the fields a tiny run's stages actually read)
    stage_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def models(self) -> Path:
        return self.out / "models"

    @property
    def distributed(self) -> bool:
        """Whether this process is one of several training together (world size > 1, e.g. under ``torchrun``)."""
        return idist.get_world_size() > 1

    @property
    def torch_device(self) -> torch.device:
        """``device``; in a distributed run the process group's device instead (``cuda:LOCAL_RANK`` under NCCL, the
        CPU under gloo without CUDA): the one `prepare_network` (``idist.auto_model``) puts the networks on."""
        return idist.device() if self.distributed else torch.device(self.device)

    def prepare_network(self, network: torch.nn.Module) -> torch.nn.Module:
        """A network about to be trained, on ``torch_device``; in a distributed run wrapped in DDP
        (`synthcp3d.engines.distributed.prepare_network`). Build it identically on every rank."""
        if not self.distributed:
            return network.to(self.torch_device)
        return prepare_network(network)

    def stage_dir(self, stage: str) -> Path:
        path = self.out / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str, inputs: Mapping[str, Any]) -> bool:
        """Whether ``stage`` can be skipped: ``force`` is off and its ``done.json`` records these ``inputs``
        (:func:`stage_inputs`). Logs why a stage that was done reruns."""
        marker = self.out / stage / DONE
        if self.force or not marker.is_file():
            return False
        reason = stale_reason(marker, inputs)
        if reason:
            logger.info(f"stage {stage}: {reason}; rerunning it")
            return False
        logger.info(f"stage {stage}: complete ({marker}); skipped (force=true reruns it)")
        return True

    def mark_done(self, stage: str, info: Mapping[str, Any], started: float, inputs: Mapping[str, Any]) -> dict:
        """Write ``<stage>/done.json`` (seconds, settings, ``info``, a fresh ``run_id``, the ``inputs`` it ran with)
        atomically; return the record."""
        record = {
            "stage": stage,
            "seconds": round(time.perf_counter() - started, 2),
            "settings": self.describe(),
            **info,
            "run_id": uuid.uuid4().hex,
            "inputs": dict(inputs),
        }
        atomic_save_json(record, self.stage_dir(stage) / DONE)
        logger.info(f"stage {stage}: done in {record['seconds']} s")
        return record

    def train_kwargs(self, iterations: int) -> dict[str, Any]:
        """`run_training` arguments from the study settings (resumable unless ``force``)."""
        return {
            "checkpoint_every": int(self.checkpoint_every),
            "resume": not self.force,
            "progress": self.progress,
            "log_every": max(int(iterations) // 5, 1),
        }

    def describe(self) -> dict:
        return {k: to_json(v) for k, v in asdict(self).items()}

    def recorded_settings(self, stage: str) -> dict:
        """The settings a ``stage``'s ``done.json`` records: :meth:`describe` less the ``runtime_fields``, the
        ``location_fields`` and the ``stage_fields`` of other stages."""
        left_out = {*self.runtime_fields, *self.location_fields}
        return {
            k: v for k, v in self.describe().items() if k not in left_out and stage in self.stage_fields.get(k, (stage,))
        }

    def resolve_paths(self, value: Any, written_by: str) -> Any:
        """``value`` (JSON data read from a file the stage ``written_by`` wrote, e.g. ``prepare/cases.json``) with
        every path below the ``output_dir`` or ``dataset_dir`` that stage ran with (the ``settings`` its
        ``done.json`` records) moved below this study's (the deeper folder wins when one holds the other): a run
        folder moved or copied with its data, or its data reached by another path, reads its own files, not those
        at the old place. Unchanged when nothing moved or the stage left no ``done.json``."""
        return move_recorded_paths(self, value, written_by)


def study_stage(
    name: str, training: bool = False, after: Sequence[str] = ()
) -> Callable[[Callable[..., Mapping[str, Any] | None]], Callable[..., dict]]:
    """Decorate ``fn(study, ...) -> info`` into a stage: skipped (returns ``{}``) when ``<name>/done.json`` records
    the inputs it would run with and ``study.force`` is off, otherwise run and timed, its ``info`` and inputs
    recorded in the marker written last. ``after``: the stages whose outputs it reads (their ``done.json`` run ids
    are among its inputs). A stale stage (a done stage whose inputs changed) reruns with ``force`` on, its old
    ``done.json`` removed first (so that an interrupted rerun is rerun, not taken as done).

    In a distributed run a ``training`` stage runs on every rank (it trains with `StudyBase.prepare_network` and
    writes on rank 0 only); any other stage runs on rank 0 alone. Rank 0 writes the marker while the others wait,
    and returns the record (the other ranks ``{}``). The decorated function's ``training`` attribute says which;
    ``stage_name`` and ``inputs(study, ...)`` (:func:`stage_inputs` of a call) serve :func:`configured_stale_reason`.
    """

    def decorate(fn: Callable[..., Mapping[str, Any] | None]) -> Callable[..., dict]:
        def inputs(study: StudyBase, *args: Any, **kwargs: Any) -> dict:
            return stage_inputs(study, fn, after, args, kwargs, stage=name)

        @functools.wraps(fn)
        def run(study: StudyBase, *args: Any, **kwargs: Any) -> dict:
            idist.get_world_size()  # ignite adopts a torchrun process group at its first call, a collective: all ranks
            current = inputs(study, *args, **kwargs)
            if study.is_done(name, current):
                return {}
            marker = study.out / name / DONE
            if marker.is_file():  # stale or forced: its own earlier outputs must not be reused
                study = replace(study, force=True)
                idist.barrier()  # every rank has seen the marker before rank 0 removes it
                # removed before the rerun: a rerun interrupted half-way must not look done to the next run
                on_main_process(marker.unlink, missing_ok=True)
            started = time.perf_counter()
            if training:
                info = fn(study, *args, **kwargs) or {}
                return on_main_process(study.mark_done, name, info, started, current) or {}
            return on_main_process(
                lambda: study.mark_done(name, fn(study, *args, **kwargs) or {}, started, current)
            ) or {}

        run.training = training  # type: ignore[attr-defined]
        run.stage_name = name  # type: ignore[attr-defined]
        run.inputs = inputs  # type: ignore[attr-defined]
        return run

    return decorate


def on_main_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 only, the other ranks waiting at a barrier until it is done (so that they
    can read what it wrote); its result on rank 0, ``None`` elsewhere. Outside a distributed run: just the call."""
    result = fn(*args, **kwargs) if idist.get_rank() == 0 else None
    idist.barrier()
    return result


def case_seed(study: StudyBase, case_id: str) -> int:
    """A case's own seed (the study seed and a stable hash of its id), e.g. for its MC-Dropout masks: a case's score
    then depends neither on the order of the cases nor on what the process ran before."""
    return (int(study.seed) * 1_000_003 + zlib.crc32(str(case_id).encode())) % 2**31


def require_file(path: str | Path, stage: str) -> Path:
    """``path`` if it exists, else a `SynthCPInputError` naming the stage that writes it."""
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"{path} is missing: run the {stage} stage first")
    return path


def write_csv_rows(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Atomically write dict rows (keys of the first row = header) as CSV."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_save_text(buf.getvalue(), path)


def nanmean(values: Any) -> float | None:
    """Mean of the finite entries (``None`` if there is none)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def fmt(value: float | None, digits: int = 2) -> str:
    """``n/a`` for undefined values, else fixed-point."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
