"""When a stage's outputs are out of date, and where a moved run's recorded paths now point.

A stage's ``done.json`` records its inputs (:func:`stage_inputs`): its settings (the study's, less the run-time-only
``StudyBase.runtime_fields`` and the ``StudyBase.location_fields``, and the stage function's other arguments,
factories by :func:`~synthcp3d.workflows.records.describe_factory`) with their sha256 fingerprint, the data set by
its content (:func:`dataset_listing`: file names and sizes, not its path), and the ``run_id`` of each upstream
stage's ``done.json``. :func:`stale_reason` is the one rule that compares them (the stages' and ``synthcp run``'s,
through :func:`configured_stale_reason`). :func:`move_recorded_paths` moves the paths a stage wrote (e.g. in
``prepare/cases.json``) from the folders it ran with to the current ones.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from synthcp3d.errors import SynthCPInputError
from synthcp3d.workflows.records import describe_factory, to_json

__all__ = [
    "DONE",
    "stage_inputs",
    "stale_reason",
    "configured_stale_reason",
    "dataset_listing",
    "marker_run_id",
    "read_marker",
    "move_recorded_paths",
]

DONE = "done.json"

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


def move_recorded_paths(study: Any, value: Any, written_by: str) -> Any:
    """``value`` (JSON data read from a file the stage ``written_by`` wrote) with every path below the
    ``output_dir`` or ``dataset_dir`` that stage ran with (its ``done.json`` ``settings``) moved below ``study``'s
    (the deeper folder wins when one holds the other); unchanged when nothing moved or there is no ``done.json``."""
    recorded = read_marker(study.out / written_by / DONE).get("settings")
    if not isinstance(recorded, Mapping):
        return value
    moves = [
        (_folder(old), _folder(getattr(study, field)))
        for field, old in ((field, recorded.get(field)) for field in _ROOT_FIELDS)
        if isinstance(old, str) and _is_folder_path(_folder(old))
    ]
    if all(old == new for old, new in moves):
        return value
    moves.sort(key=lambda move: len(move[0].parts), reverse=True)  # the deeper folder first (an unmoved one too)
    return _move_paths(value, moves)


def stage_inputs(
    study: Any,
    fn: Callable[..., Any],
    after: Sequence[str],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    stage: str,
) -> dict:
    """What the call ``fn(study, *args, **kwargs)`` of the stage named ``stage`` depends on, as its ``done.json``
    records it: ``settings`` (``study``: `StudyBase.recorded_settings` — the study's less its ``runtime_fields``,
    ``location_fields`` and the ``stage_fields`` of other stages; ``stage``: the
    function's other arguments, defaults included), their sha256 ``fingerprint``, ``dataset``: the data set by its
    content (:func:`dataset_listing` of ``dataset_dir``, the output folder left out where it lies inside; ``None``
    when there is no such folder), ``dataset_dir`` (where it was: a record, not compared), ``after``: the
    ``run_id`` of each upstream ``done.json`` (``None`` where there is none) and ``defaults``: ``{"stage": the
    function's argument defaults}`` (not fingerprinted; :func:`stale_reason` reads the current ones)."""
    signature = inspect.signature(fn)
    bound = signature.bind(study, *args, **kwargs)
    bound.apply_defaults()
    arguments = list(bound.arguments.items())[1:]  # the first is the study
    defaults = {
        name: _describe_argument(p.default)
        for name, p in list(signature.parameters.items())[1:]
        if p.default is not inspect.Parameter.empty
    }
    settings = {
        "study": study.recorded_settings(stage),
        "stage": {k: _describe_argument(v) for k, v in arguments},
    }
    return {
        "fingerprint": _fingerprint(settings),
        "settings": settings,
        "dataset": dataset_listing(study.dataset_dir, exclude=(study.out,)),
        "dataset_dir": to_json(study.dataset_dir),
        "after": {stage: marker_run_id(study.out / stage / DONE) for stage in after},
        "defaults": {"stage": defaults},
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
    among its settings: it stays up to date while that path and the other settings are unchanged. A stage argument
    the ``done.json`` does not record (added to the stage since) counts as unchanged while its current value is the
    function's default, so a new argument whose default keeps the old behaviour reruns nothing. A study setting the
    ``done.json`` records but the stage no longer records — removed from synthcp since, or listed since in the study's
    ``stage_fields`` for other stages only — is not compared: the stage does not read it now, and, as for any change
    of synthcp's code, a stage whose results such a change alters is rerun with force (the bundle's changelog says
    which). A setting the stage records now but the ``done.json`` lacks (added, renamed) makes it stale."""
    recorded = read_marker(marker).get("inputs")
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
    if fingerprint != inputs["fingerprint"] and isinstance(old_settings, Mapping):
        old_settings = _with_new_defaults(_without_removed_study_fields(old_settings, inputs), inputs)
        fingerprint = _fingerprint(old_settings)
    if fingerprint != inputs["fingerprint"]:
        changed += _changed_keys(old_settings, inputs["settings"]) or ["fingerprint"]
    return f"stale: settings changed ({', '.join(changed)})" if changed else None


def _without_removed_study_fields(old: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict:
    """Recorded settings ``old`` less the study settings the stage does not record now (see :func:`stale_reason`)."""
    before = old.get("study")
    if not isinstance(before, Mapping):
        return dict(old)
    current = inputs["settings"]["study"]
    return {**old, "study": {k: v for k, v in before.items() if k in current}}


def _with_new_defaults(old: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict:
    """Recorded settings ``old`` plus each stage argument they lack whose current value is its default."""
    before = old.get("stage")
    if not isinstance(before, Mapping):
        return dict(old)
    current, defaults = inputs["settings"]["stage"], inputs.get("defaults", {}).get("stage", {})
    added = {k: current[k] for k, v in defaults.items() if k not in before and k in current and current[k] == v}
    return {**old, "stage": {**before, **added}}


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
    return read_marker(path).get("run_id")


def read_marker(path: Path) -> dict:
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
