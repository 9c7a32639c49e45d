"""What every study's stage functions share, whatever the study or ``spatial_dims``: output layout, done-markers,
network specs, CSV rows.

A study's settings dataclass derives from :class:`StudyBase`; a stage function is decorated with :func:`study_stage`,
which writes ``<output_dir>/<stage>/done.json`` atomically as the stage's last act (the marker ``synthcp run`` checks).

Staleness: a ``done.json`` records the stage's inputs (:func:`stage_inputs`): its settings (the study's, less the
run-time-only ``StudyBase.runtime_fields`` and the ``StudyBase.location_fields``, and the stage function's other
arguments, factories by :func:`describe_factory`) with their sha256 fingerprint, the data set by its content
(:func:`dataset_listing`: file names and sizes below ``dataset_dir``, not its path), and the ``run_id`` of the
``done.json`` of each stage it reads (``study_stage(..., after=...)``); each ``done.json`` gets a fresh ``run_id``.
A stage is skipped only when its recorded inputs equal the current ones (:func:`stale_reason`, the one rule;
``synthcp run`` asks it through :func:`configured_stale_reason` before it skips a stage). Rerunning a stage thus
makes every stage after it stale in turn. A stale stage reruns as with ``force`` (its own earlier weights, folds and
checkpoints came from other inputs).

Moving a run: neither ``output_dir`` nor ``dataset_dir`` is among the recorded inputs, so a run folder moved or copied
together with its data (e.g. the demo's ``OUT/data``), or the same data set reached by another path, stays up to
date. The files that record paths for
later stages (``prepare/cases.json``, ``crossval/cases.json``) are read with :meth:`StudyBase.resolve_paths`, which
moves them from the folders the writing stage ran with (its ``done.json``) to the current ones.

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
import os
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
    "dataset_listing",
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
    #: fields that only say where the data set lies: left out of the recorded settings as well, the data set being
    #: recorded by its content instead (:func:`dataset_listing`), so that a run folder moved or copied with its data,
    #: or the same data reached by another path, reruns nothing (``output_dir`` is among ``runtime_fields``)
    location_fields: ClassVar[tuple[str, ...]] = ("dataset_dir",)

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

    def resolve_paths(self, value: Any, written_by: str) -> Any:
        """``value`` (JSON data read from a file the stage ``written_by`` wrote, e.g. ``prepare/cases.json``) with
        every path below the ``output_dir`` or ``dataset_dir`` that stage ran with (the ``settings`` its
        ``done.json`` records) moved below this study's (the deeper folder wins when one holds the other): a run
        folder moved or copied with its data, or its data reached by another path, reads its own files, not those
        at the old place. Unchanged when nothing moved or the stage left no ``done.json``."""
        recorded = _read_marker(self.out / written_by / DONE).get("settings")
        if not isinstance(recorded, Mapping):
            return value
        moves = [
            (_folder(old), _folder(getattr(self, field)))
            for field, old in ((field, recorded.get(field)) for field in _ROOT_FIELDS)
            if isinstance(old, str) and _is_folder_path(_folder(old))
        ]
        if all(old == new for old, new in moves):
            return value
        moves.sort(key=lambda move: len(move[0].parts), reverse=True)  # the deeper folder first (an unmoved one too)
        return _move_paths(value, moves)


#: the study folders whose moves :meth:`StudyBase.resolve_paths` follows
_ROOT_FIELDS = ("output_dir", "dataset_dir")


def _folder(path: str | os.PathLike) -> Path:
    """A folder setting as the data loaders spell the paths below it (``~`` expanded, normalised)."""
    return Path(os.path.normpath(os.path.expanduser(path)))


def _is_folder_path(path: Path) -> bool:
    """Whether ``path`` names a folder other than the current one (``.`` would match every relative string)."""
    return bool(path.parts) and path != Path(".")


def _move_paths(value: Any, moves: Sequence[tuple[Path, Path]]) -> Any:
    """``value`` with each string that is a path below an old folder of ``moves`` (``(old, new)``, deepest first;
    compared as written, absolute with absolute and relative with relative) moved below its new folder."""
    if isinstance(value, Mapping):
        return {k: _move_paths(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_move_paths(v, moves) for v in value]
    if not isinstance(value, str) or not value:
        return value
    path = Path(os.path.normpath(value))
    for old, new in moves:
        if old.is_absolute() == path.is_absolute() and old in path.parents:
            return str(new / path.relative_to(old))
    return value


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
    ``settings`` (``study``: the study's less its ``runtime_fields`` and ``location_fields``; ``stage``: the
    function's other arguments, defaults included), their sha256 ``fingerprint``, ``dataset``: the data set by its
    content (:func:`dataset_listing` of ``dataset_dir``, the output folder left out where it lies inside; ``None``
    when there is no such folder), ``dataset_dir`` (where it was: a record, not compared) and ``after``: the
    ``run_id`` of each upstream ``done.json`` (``None`` where there is none)."""
    bound = inspect.signature(fn).bind(study, *args, **kwargs)
    bound.apply_defaults()
    arguments = list(bound.arguments.items())[1:]  # the first is the study
    left_out = {*study.runtime_fields, *study.location_fields}
    settings = {
        "study": {k: v for k, v in study.describe().items() if k not in left_out},
        "stage": {k: _describe_argument(v) for k, v in arguments},
    }
    return {
        "fingerprint": _fingerprint(settings),
        "settings": settings,
        "dataset": dataset_listing(study.dataset_dir, exclude=(study.out,)),
        "dataset_dir": to_json(study.dataset_dir),
        "after": {stage: marker_run_id(study.out / stage / DONE) for stage in after},
    }


def _fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of recorded settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dataset_listing(dataset_dir: str | os.PathLike | None, exclude: Sequence[str | os.PathLike] = ()) -> dict | None:
    """The data set identified by its content, cheaply: ``{"listing": sha256, "files": count, "bytes": total}``
    over the sorted (path relative to ``dataset_dir``, size in bytes) of every file below it; ``None`` when
    ``dataset_dir`` is not given or does not exist (a lone file is listed as itself).

    Only names and sizes are read, never contents nor modification times: a copy of the data set (new times) lists
    the same, and a folder of hundreds of tens-of-GB volumes lists in milliseconds. A file rewritten with other
    bytes of the same size is thus not seen (a deliberate trade: rename, add, remove or resize files to be seen).
    Hidden entries (names starting with ``.``, e.g. ``.DS_Store`` or the ``._*`` files of macOS archives) and the
    folders in ``exclude`` (e.g. an output folder inside the data folder) are left out; symbolic links are
    followed (each folder listed once).
    """
    if dataset_dir is None or str(dataset_dir) == "":
        return None
    root = Path(dataset_dir).expanduser()
    if root.is_file():
        entries = [(".", root.stat().st_size)]
    elif root.is_dir():
        entries = _list_files(root, exclude)
    else:
        return None
    digest = hashlib.sha256()
    for name, size in sorted(entries):
        digest.update(json.dumps([name, size]).encode() + b"\n")
    return {"listing": digest.hexdigest(), "files": len(entries), "bytes": sum(max(size, 0) for _, size in entries)}


def _list_files(root: Path, exclude: Sequence[str | os.PathLike]) -> list[tuple[str, int]]:
    """(relative posix path, size; -1: a broken link) of every file below ``root`` (see :func:`dataset_listing`)."""
    def key(path: str | os.PathLike) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    skip = {k for k in (key(p) for p in exclude) if k is not None}
    seen = {key(root)}
    entries: list[tuple[str, int]] = []
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError:
            continue
        for entry in children:
            if entry.name.startswith("."):
                continue
            name = f"{prefix}{entry.name}"
            try:
                if entry.is_dir():  # follows links
                    ident = key(entry.path)
                    if ident not in seen and ident not in skip:
                        seen.add(ident)
                        pending.append((Path(entry.path), f"{name}/"))
                    continue
                size = entry.stat().st_size
            except OSError:  # a broken link
                size = -1
            entries.append((name, size))
    return entries


def stale_reason(marker: Path, inputs: Mapping[str, Any]) -> str | None:
    """Why the existing ``marker`` (a stage's ``done.json``) does not record ``inputs`` (:func:`stage_inputs`), or
    ``None`` when it does: the one staleness rule, of the stages and of ``synthcp run``.

    A ``done.json`` of an older synthcp (no ``dataset`` entry) recorded the data set by its path, ``dataset_dir``
    among its settings: it stays up to date while that path and the other settings are unchanged."""
    recorded = _read_marker(marker).get("inputs")
    if not isinstance(recorded, Mapping):
        return "stale: its done.json records no inputs (written by an older synthcp, or unreadable)"
    before = recorded.get("after") if isinstance(recorded.get("after"), Mapping) else {}
    rerun = [stage for stage, run_id in inputs["after"].items() if before.get(stage) != run_id]
    if rerun:
        return f"stale: upstream {', '.join(rerun)} ran again since"
    changed = []
    old_settings, fingerprint = recorded.get("settings"), recorded.get("fingerprint")
    if "dataset" in recorded:
        if _listing_key(recorded.get("dataset")) != _listing_key(inputs["dataset"]):
            changed.append(f"dataset listing: {_describe_listing(recorded.get('dataset'), inputs['dataset'])}")
    elif isinstance(old_settings, Mapping) and isinstance(old_settings.get("study"), Mapping):
        study = dict(old_settings["study"])
        if study.pop("dataset_dir", None) != inputs.get("dataset_dir"):
            changed.append("study.dataset_dir, recorded by path by an older synthcp")
        old_settings = {**old_settings, "study": study}
        fingerprint = _fingerprint(old_settings)
    if fingerprint != inputs["fingerprint"]:
        changed += _changed_keys(old_settings, inputs["settings"]) or ["fingerprint"]
    return f"stale: settings changed ({', '.join(changed)})" if changed else None


def _listing_key(listing: Any) -> Any:
    """What of a recorded :func:`dataset_listing` is compared (its ``listing`` hash; ``None``: no data folder)."""
    return listing.get("listing") if isinstance(listing, Mapping) else None


def _describe_listing(old: Any, new: Any) -> str:
    """How a data set's listing changed, in words."""
    def words(listing: Any) -> str:
        if not isinstance(listing, Mapping):
            return "no data folder"
        return f"{listing.get('files')} files, {listing.get('bytes')} bytes"

    before, after = words(old), words(new)
    return f"{before} -> {after}" if before != after else f"{after}, other names or sizes"


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
