"""What every study's stage functions share, whatever the study or ``spatial_dims``: output layout, done-markers,
network specs, CSV rows.

A study's settings dataclass derives from :class:`StudyBase`; a stage function is decorated with :func:`study_stage`,
which writes ``<output_dir>/<stage>/done.json`` atomically as the stage's last act (the marker ``synthcp run`` checks).

Staleness: a ``done.json`` records the stage's inputs (:func:`stage_inputs`): its settings (the study's, less the
run-time-only ``StudyBase.runtime_fields``, and the stage function's other arguments, factories by
:func:`describe_factory`) with their sha256 fingerprint, and the ``run_id`` of the ``done.json`` of each stage it
reads (``study_stage(..., after=...)``); each ``done.json`` gets a fresh ``run_id``. A stage is skipped only when its
recorded inputs equal the current ones (:func:`stale_reason`, the one rule; ``synthcp run`` asks it through
:func:`configured_stale_reason` before it skips a stage). Rerunning a stage thus makes every stage after it stale in
turn. A stale stage reruns as with ``force`` (its own earlier weights, folds and checkpoints came from other inputs).

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
import hashlib
import inspect
import io
import json
import logging
import math
import pydoc
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import ignite.distributed as idist
import numpy as np
import torch

from synthcp3d.engines.checkpoint import save_weights
from synthcp3d.engines.distributed import prepare_network
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json, atomic_save_text

__all__ = [
    "DONE",
    "StudyBase",
    "study_stage",
    "stage_inputs",
    "stale_reason",
    "configured_stale_reason",
    "marker_run_id",
    "on_main_process",
    "to_json",
    "describe_factory",
    "save_network",
    "save_network_spec",
    "load_network_spec",
    "build_network",
    "require_file",
    "write_csv_rows",
    "nanmean",
    "fmt",
]

logger = logging.getLogger(__name__)

DONE = "done.json"


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

    #: fields that change how a stage runs, not what it computes: left out of the settings a ``done.json`` records,
    #: so changing them reruns nothing (a subclass adds its own, e.g. a cache size)
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "output_dir", "device", "force", "progress", "checkpoint_every", "num_workers",
    )

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


def study_stage(
    name: str, training: bool = False, after: Sequence[str] = ()
) -> Callable[[Callable[..., Mapping[str, Any] | None]], Callable[..., dict]]:
    """Decorate ``fn(study, ...) -> info`` into a stage: skipped (returns ``{}``) when ``<name>/done.json`` records
    the inputs it would run with and ``study.force`` is off, otherwise run and timed, its ``info`` and inputs
    recorded in the marker written last. ``after``: the stages whose outputs it reads (their ``done.json`` run ids
    are among its inputs). A stale stage (a done stage whose inputs changed) reruns with ``force`` on.

    In a distributed run a ``training`` stage runs on every rank (it trains with `StudyBase.prepare_network` and
    writes on rank 0 only); any other stage runs on rank 0 alone. Rank 0 writes the marker while the others wait,
    and returns the record (the other ranks ``{}``). The decorated function's ``training`` attribute says which;
    ``stage_name`` and ``inputs(study, ...)`` (:func:`stage_inputs` of a call) serve :func:`configured_stale_reason`.
    """

    def decorate(fn: Callable[..., Mapping[str, Any] | None]) -> Callable[..., dict]:
        def inputs(study: StudyBase, *args: Any, **kwargs: Any) -> dict:
            return stage_inputs(study, fn, after, args, kwargs)

        @functools.wraps(fn)
        def run(study: StudyBase, *args: Any, **kwargs: Any) -> dict:
            idist.get_world_size()  # ignite adopts a torchrun process group at its first call, a collective: all ranks
            current = inputs(study, *args, **kwargs)
            if study.is_done(name, current):
                return {}
            if (study.out / name / DONE).is_file():  # stale: its own earlier outputs must not be reused
                study = replace(study, force=True)
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


def stage_inputs(
    study: StudyBase, fn: Callable[..., Any], after: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict:
    """What the call ``fn(study, *args, **kwargs)`` of a stage function depends on, as its ``done.json`` records it:
    ``settings`` (``study``: the study's less its ``runtime_fields``; ``stage``: the function's other arguments,
    defaults included), their sha256 ``fingerprint``, and ``after``: the ``run_id`` of each upstream ``done.json``
    (``None`` where there is none)."""
    bound = inspect.signature(fn).bind(study, *args, **kwargs)
    bound.apply_defaults()
    arguments = list(bound.arguments.items())[1:]  # the first is the study
    settings = {
        "study": {k: v for k, v in study.describe().items() if k not in study.runtime_fields},
        "stage": {k: _describe_argument(v) for k, v in arguments},
    }
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return {
        "fingerprint": hashlib.sha256(canonical.encode()).hexdigest(),
        "settings": settings,
        "after": {stage: marker_run_id(study.out / stage / DONE) for stage in after},
    }


def stale_reason(marker: Path, inputs: Mapping[str, Any]) -> str | None:
    """Why the existing ``marker`` (a stage's ``done.json``) does not record ``inputs`` (:func:`stage_inputs`), or
    ``None`` when it does: the one staleness rule, of the stages and of ``synthcp run``."""
    recorded = _read_marker(marker).get("inputs")
    if not isinstance(recorded, Mapping):
        return "stale: its done.json records no inputs (written by an older synthcp, or unreadable)"
    before = recorded.get("after") if isinstance(recorded.get("after"), Mapping) else {}
    rerun = [stage for stage, run_id in inputs["after"].items() if before.get(stage) != run_id]
    if rerun:
        return f"stale: upstream {', '.join(rerun)} ran again since"
    if recorded.get("fingerprint") != inputs["fingerprint"]:
        changed = _changed_keys(recorded.get("settings"), inputs["settings"])
        return f"stale: settings changed ({', '.join(changed) or 'fingerprint'})"
    return None


def configured_stale_reason(configured: partial) -> str | None:
    """:func:`stale_reason` of a bundle's configured stage, its config's ``stage`` resolved (a ``partial`` of a
    :func:`study_stage` function with the study and its arguments), against its existing ``done.json``."""
    stage = configured.func
    bound = inspect.signature(stage).bind(*configured.args, **configured.keywords)
    study = next(iter(bound.arguments.values()))
    marker = study.out / stage.stage_name / DONE
    return stale_reason(marker, stage.inputs(*configured.args, **configured.keywords))


def _describe_argument(value: Any) -> Any:
    """A stage argument as JSON: a network factory by :func:`describe_factory`, containers entry by entry."""
    if isinstance(value, Mapping):
        return {str(k): _describe_argument(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe_argument(v) for v in value]
    if callable(value):
        try:
            return describe_factory(value)
        except SynthCPInputError:
            pass
    return to_json(value)


def marker_run_id(path: Path) -> str | None:
    """The ``run_id`` of a ``done.json`` (``None``: missing, unreadable, or written by an older synthcp)."""
    return _read_marker(path).get("run_id")


def _read_marker(path: Path) -> dict:
    """A ``done.json`` as a dict (``{}`` if missing or unreadable)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _changed_keys(old: Any, new: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``part.key`` of each top-level setting that differs between recorded ``old`` and current ``new`` settings."""
    old = old if isinstance(old, Mapping) else {}
    changed = []
    for part, values in new.items():
        before = old.get(part) if isinstance(old.get(part), Mapping) else {}
        changed += [f"{part}.{k}" for k in sorted({*before, *values}) if before.get(k, ...) != values.get(k, ...)]
    return changed


def on_main_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 only, the other ranks waiting at a barrier until it is done (so that they
    can read what it wrote); its result on rank 0, ``None`` elsewhere. Outside a distributed run: just the call."""
    result = fn(*args, **kwargs) if idist.get_rank() == 0 else None
    idist.barrier()
    return result


def to_json(value: Any, strict: bool = False) -> Any:
    """``value`` as plain JSON data: tuples -> lists, numpy scalars/arrays -> numbers/lists, paths -> strings.

    Anything else becomes its ``str`` (a readable record), or with ``strict`` raises `SynthCPInputError` (a value
    that must be read back exactly, e.g. a network argument).
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, strict) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        return to_json(value.tolist(), strict)
    if isinstance(value, Path):
        return str(value)
    if strict:
        raise SynthCPInputError(f"{value!r} ({type(value).__name__}) cannot be written as JSON")
    return str(value)


#: modules whose callables ``networks.json`` may name (it travels with trained bundles: nothing else is built)
_NETWORK_PACKAGES = ("synthcp3d.", "synthcp2d.")


def describe_factory(factory: Any) -> dict:
    """JSON description ``{"_target_": "module.callable", **arguments}`` of a network factory from a bundle config
    (``_mode_: callable``: a ``functools.partial`` of keyword arguments, or the callable itself when it has none);
    :func:`build_network` rebuilds the network from it.

    Raises:
        SynthCPInputError: not such a factory, or an argument is not JSON data.
    """
    func, args, keywords = factory, (), {}
    if isinstance(factory, partial):
        func, args, keywords = factory.func, factory.args, factory.keywords
    if args or not callable(func) or not hasattr(func, "__qualname__"):
        raise SynthCPInputError(f"network factory {factory!r} is not a config factory (`_mode_: callable`)")
    target = f"{func.__module__}.{func.__qualname__}"
    try:
        return {"_target_": target, **{k: to_json(v, strict=True) for k, v in keywords.items()}}
    except SynthCPInputError as err:
        raise SynthCPInputError(f"network factory {target}: {err}") from None


def save_network_spec(study: StudyBase, name: str, factory: Any) -> None:
    """Record how ``models/<name>.pt`` is built in ``models/networks.json`` (so weights can be reloaded elsewhere);
    on rank 0 only, as `save_weights`."""
    if idist.get_rank() != 0:
        return
    path = study.models / "networks.json"
    specs = json.loads(path.read_text()) if path.is_file() else {}
    specs[name] = describe_factory(factory)
    atomic_save_json(specs, path)


def save_network(study: StudyBase, name: str, key: str, net: torch.nn.Module, factory: Any) -> Path:
    """The one way a trained network is kept: weights ``{key: state}`` in ``models/<name>.pt`` (`save_weights`:
    atomic, rank 0) and how to build it in ``models/networks.json``. Returns the weights' path."""
    path = study.models / f"{name}.pt"
    save_weights({key: net}, path)
    save_network_spec(study, name, factory)
    return path


def load_network_spec(models: str | Path, name: str, stage: str) -> dict:
    """The ``networks.json`` entry of network ``name`` (see :func:`save_network_spec`) in the ``models`` folder.

    Raises:
        SynthCPInputError: the file is missing or unreadable, or has no entry ``name`` (``stage`` writes it).
    """
    path = require_file(Path(models) / "networks.json", stage)
    try:
        specs = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SynthCPInputError(f"network specs {path} are unreadable ({err})") from None
    if not isinstance(specs, dict) or not isinstance(specs.get(name), dict):
        raise SynthCPInputError(f"{path} describes no {name!r} network: run the {stage} stage")
    return dict(specs[name])


def build_network(spec: Mapping[str, Any], name: str) -> torch.nn.Module:
    """Build a network from its :func:`describe_factory` spec: ``_target_(**arguments)``.

    Only callables of this project are built, called directly with the JSON arguments (nothing is evaluated).

    Raises:
        SynthCPInputError: unexpected ``_target_``, or the constructor refuses the arguments.
    """
    args = dict(spec)
    target = str(args.pop("_target_", ""))
    factory = pydoc.locate(target) if target.startswith(_NETWORK_PACKAGES) else None
    if not callable(factory):
        raise SynthCPInputError(f"networks.json entry {name!r} has an unexpected _target_ {target!r}")
    try:
        return factory(**args)
    except Exception as err:  # noqa: BLE001 - constructors raise many types for arguments that do not fit
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthCPInputError(f"cannot build network {name!r} from networks.json: {first}") from None


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
