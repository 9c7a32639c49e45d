"""Medical Segmentation Decathlon folders (Task07_Pancreas by default): locate, check, list, load through MONAI.

The layout is MSD's: ``Task07_Pancreas/{dataset.json, imagesTr/, labelsTr/, imagesTs/}``, ``dataset.json`` listing
``training`` as ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` and ``test`` as image paths.
Listing goes through MONAI's :func:`monai.data.load_decathlon_datalist`, loading through
:class:`monai.apps.DecathlonDataset` (``download=False``); this module adds what those lack: finding the task folder
from what a user points at, and one-line errors for a folder that is incomplete, malformed or inconsistent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.apps import DecathlonDataset
from monai.data import load_decathlon_datalist
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError

__all__ = ["resolve_task_dir", "read_dataset_json", "load_msd_datalist", "check_msd_folder", "decathlon_dataset"]

DEFAULT_TASK = "Task07_Pancreas"
_SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs")
_NIFTI = (".nii", ".nii.gz")


def resolve_task_dir(root: str | os.PathLike, task: str = DEFAULT_TASK) -> Path:
    """The task folder (the one holding ``dataset.json``) from ``root`` = that folder itself or its parent.

    Raises ``SynthCPInputError`` naming what was found instead: a missing folder, a file, ``imagesTr`` or another
    subfolder of the task, a task folder without ``dataset.json``, a doubly extracted archive, another MSD task, or
    a folder of loose NIfTI files.
    """
    root = Path(root)
    if not root.exists():
        raise SynthCPInputError(f"{root}: no such folder; give the {task} folder or its parent.")
    if root.is_file() and root.name == "dataset.json":
        root = root.parent
    if not root.is_dir():
        raise SynthCPInputError(f"{root}: is a file, not a folder; give the {task} folder or its parent.")
    if (root / "dataset.json").is_file():
        return root
    if (root / task / "dataset.json").is_file():
        return root / task
    if root.name in _SUBFOLDERS and (root.parent / "dataset.json").is_file():
        raise SynthCPInputError(
            f"{root}: this is the {root.name} folder inside the task folder; give its parent {root.parent}."
        )
    if (root / task / task / "dataset.json").is_file():
        raise SynthCPInputError(
            f"{root}: the archive was extracted twice; give {root / task / task} (the folder holding dataset.json)."
        )
    if (root / task).is_dir():
        raise SynthCPInputError(f"{root / task}: dataset.json is missing; the MSD folder is incomplete.")
    if any((root / sub).is_dir() for sub in _SUBFOLDERS):
        raise SynthCPInputError(
            f"{root}: has {'/'.join(_SUBFOLDERS)} folders but no dataset.json; the folder is incomplete."
        )
    nested = sorted(p.parent for p in root.glob(f"*/{task}/dataset.json"))
    if nested:
        raise SynthCPInputError(f"{root}: the task folder is one level deeper; give {nested[0]}.")
    others = sorted(p.parent.name for p in root.glob("Task*/dataset.json"))
    if others:
        raise SynthCPInputError(f"{root}: holds {', '.join(others)}, not {task}.")
    if any(p.name.endswith(_NIFTI) for p in root.iterdir()):
        raise SynthCPInputError(
            f"{root}: holds NIfTI files directly; expected the MSD layout {task}/{{dataset.json, imagesTr, labelsTr}}."
        )
    raise SynthCPInputError(f"{root}: not an MSD {task} folder (no dataset.json in it or in {root / task}).")


def _fail(path: Path, what: str) -> SynthCPInputError:
    return SynthCPInputError(f"{path}: malformed dataset.json: {what}.")


def read_dataset_json(task_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate ``task_dir/dataset.json`` (MSD's keys and types); return it as a dict.

    Checks: valid JSON object; ``training`` a list of ``{"image": str, "label": str}``; ``test`` (if present) a list of
    strings or ``{"image": str}``; ``labels`` a dict keyed by non-negative integers including ``"0"``;
    ``tensorImageSize`` "3D"; ``numTraining``/``numTest`` (if present) equal to the list lengths.
    """
    path = Path(task_dir) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SynthCPInputError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}).")
    except (OSError, UnicodeDecodeError) as err:
        raise SynthCPInputError(f"{path}: cannot be read ({err}).")
    if not isinstance(meta, dict):
        raise _fail(path, f"the top level is a {type(meta).__name__}, not an object")
    training = meta.get("training")
    if not isinstance(training, list):
        raise _fail(path, "no 'training' list")
    for i, item in enumerate(training):
        if not (isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("label"), str)):
            raise _fail(path, f"training entry {i} is not {{'image': path, 'label': path}}: {str(item)[:80]}")
    test = meta.get("test", [])
    if not isinstance(test, list) or not all(
        isinstance(t, str) or (isinstance(t, dict) and isinstance(t.get("image"), str)) for t in test
    ):
        raise _fail(path, "'test' must be a list of image paths")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise _fail(path, "no 'labels' object (e.g. {'0': 'background', '1': 'pancreas', '2': 'cancer'})")
    if not all(isinstance(k, str) and k.isdigit() for k in labels) or "0" not in labels:
        raise _fail(path, f"'labels' keys must be non-negative integers including 0, got {sorted(labels)}")
    if meta.get("tensorImageSize", "3D") != "3D":
        raise _fail(path, f"tensorImageSize is {meta['tensorImageSize']!r}; this reader expects 3D volumes")
    for key, listed in (("numTraining", training), ("numTest", test)):
        if key in meta and meta[key] != len(listed):
            raise _fail(path, f"{key} is {meta[key]} but {len(listed)} entries are listed")
    return meta


def _relative(path: str | os.PathLike, base: Path) -> str:
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return str(path)


def _case_id(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _check_listed_files(task_dir: Path, meta: dict[str, Any]) -> tuple[int, int]:
    """Every file dataset.json lists must exist and be non-empty; returns (checked, unlisted NIfTI files)."""
    listed: list[str] = []
    for item in meta["training"]:
        listed += [item["image"], item["label"]]
    listed += [t if isinstance(t, str) else t["image"] for t in meta.get("test", [])]
    missing = [p for p in listed if not (task_dir / p).is_file()]
    if missing:
        example = os.path.normpath(missing[0])
        raise SynthCPInputError(
            f"{task_dir}: {len(missing)} of {len(listed)} files listed in dataset.json are missing, e.g. {example}; "
            "is the download or extraction complete?"
        )
    empty = [p for p in listed if (task_dir / p).stat().st_size == 0]
    if empty:
        raise SynthCPInputError(
            f"{task_dir}: {len(empty)} listed file(s) are empty (0 bytes), e.g. {os.path.normpath(empty[0])}."
        )
    listed_set = {os.path.normpath(task_dir / p) for p in listed}
    unlisted = 0
    for sub in _SUBFOLDERS:
        if (task_dir / sub).is_dir():
            # MSD's archives also carry macOS "._name" resource forks: not data, never listed, ignored here.
            unlisted += sum(
                1
                for f in (task_dir / sub).iterdir()
                if f.name.endswith(_NIFTI) and not f.name.startswith("._") and os.path.normpath(f) not in listed_set
            )
    return len(listed), unlisted


def load_msd_datalist(
    root: str | os.PathLike, task: str = DEFAULT_TASK, section: str = "training"
) -> list[dict[str, str]]:
    """List a section of an MSD task as ``[{"image", "label", "case"}]`` with absolute paths, in dataset.json order.

    Args:
        root: the task folder or its parent.
        task: MSD task folder name.
        section: ``"training"`` (image + label), ``"test"`` (image only) or any list key the dataset.json holds.

    Returns:
        one dict per case; ``case`` is the file name without ``.nii.gz`` (e.g. ``"pancreas_001"``).
    """
    task_dir = resolve_task_dir(root, task)
    meta = read_dataset_json(task_dir)
    if section not in meta or not isinstance(meta[section], list):
        raise SynthCPInputError(f"{task_dir / 'dataset.json'}: has no '{section}' list (sections: training, test).")
    _check_listed_files(task_dir, meta)
    if not meta[section]:  # MONAI indexes the first test entry, so an empty list is answered here
        return []
    items = load_decathlon_datalist(
        task_dir / "dataset.json", is_segmentation=section != "test", data_list_key=section, base_dir=task_dir
    )
    out = []
    for item in items:
        entry = {k: os.path.normpath(v) if isinstance(v, str) else v for k, v in item.items()}
        entry["case"] = _case_id(entry["image"])
        out.append(entry)
    return out


def _allowed_labels(meta: dict[str, Any]) -> set[int]:
    return {int(k) for k in meta["labels"]}


def _check_case(image_path: Path, label_path: Path, allowed: set[int], affine_tol: float) -> tuple[dict, str | None]:
    """Header-level image checks and full label checks for one case: (facts, problem or None)."""
    try:
        image = nib.load(str(image_path))
    except Exception as err:  # any reader failure is a problem of this case, reported with the others
        return {}, f"image cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    try:
        label = nib.load(str(label_path))
        values = np.unique(np.asanyarray(label.dataobj))
    except Exception as err:
        return {}, f"label cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    facts = {
        "shape": tuple(int(s) for s in image.shape),
        "spacing": tuple(float(s) for s in image.header.get_zooms()[:3]),
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "values": {int(v) for v in values.tolist() if np.isfinite(v) and float(v).is_integer()},
    }
    if len(image.shape) != 3:
        return facts, f"image is {len(image.shape)}D (shape {tuple(image.shape)}), expected a 3D volume"
    if tuple(label.shape) != tuple(image.shape):
        return facts, f"image/label shape mismatch: image {tuple(image.shape)}, label {tuple(label.shape)}"
    diff = float(np.abs(np.asarray(image.affine) - np.asarray(label.affine)).max())
    if diff > affine_tol:
        return facts, f"image/label affine mismatch (largest difference {diff:.4g} > tolerance {affine_tol:g})"
    if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
        bad = [v for v in values.tolist() if not (np.isfinite(v) and float(v).is_integer())][:5]
        return facts, f"label holds non-integer values {bad}"
    outside = sorted(int(v) for v in values.tolist() if int(v) not in allowed)
    if outside:
        return facts, f"label values {outside} outside the declared set {sorted(allowed)}"
    return facts, None


def check_msd_folder(
    root: str | os.PathLike,
    task: str = DEFAULT_TASK,
    deep: bool = False,
    affine_tol: float = 1e-3,
    progress: bool = True,
) -> dict[str, Any]:
    """Check an MSD task folder and summarise it; raise ``SynthCPInputError`` (one line) on the first kind of problem.

    Always: the folder layout (``root`` = task folder or its parent), a well-formed ``dataset.json``, every listed
    file present and non-empty. With ``deep=True``, per training case: the image is 3D, the label has the image's
    shape and affine (max absolute element difference <= ``affine_tol``), and every label value is an integer of the
    declared ``labels`` set. Image voxels are not read in the deep check (headers only; labels are read in full).
    All cases are checked before raising; the message names the first bad case and counts the others.

    Returns:
        ``{"folder", "task", "name", "modality", "labels", "training_cases", "test_cases", "listed_files",
        "unlisted_files", "deep"}``, plus with ``deep``: ``"shape_min"``, ``"shape_max"``, ``"spacing_min"``,
        ``"spacing_max"``, ``"orientations"`` (axis codes -> count), ``"cases_with_label"`` (label -> number of
        training cases where it occurs; for Task07 ``"2"`` counts the cases with a tumour).
    """
    task_dir = resolve_task_dir(root, task)
    meta = read_dataset_json(task_dir)
    listed, unlisted = _check_listed_files(task_dir, meta)
    summary: dict[str, Any] = {
        "folder": str(task_dir),
        "task": task_dir.name,
        "name": meta.get("name", ""),
        "modality": meta.get("modality", {}),
        "labels": meta["labels"],
        "training_cases": len(meta["training"]),
        "test_cases": len(meta.get("test", [])),
        "listed_files": listed,
        "unlisted_files": unlisted,
        "deep": bool(deep),
    }
    if not deep:
        return summary
    allowed = _allowed_labels(meta)
    problems: list[tuple[str, str]] = []
    facts_all: list[dict] = []
    for item in tqdm(meta["training"], desc=f"checking {task_dir.name}", unit="case", disable=not progress):
        image_path, label_path = task_dir / item["image"], task_dir / item["label"]
        facts, problem = _check_case(image_path, label_path, allowed, affine_tol)
        if problem is not None:
            problems.append((os.path.normpath(item["label"]), problem))
        if facts:
            facts_all.append(facts)
    if problems:
        where, what = problems[0]
        others = ", ".join(_case_id(p) for p, _ in problems[1:6]) + (", ..." if len(problems) > 6 else "")
        more = f"; {len(problems) - 1} more bad case(s): {others}" if len(problems) > 1 else ""
        raise SynthCPInputError(f"{task_dir}: {_case_id(where)}: {what} ({where}){more}.")
    shapes = np.array([f["shape"] for f in facts_all])
    spacings = np.array([f["spacing"] for f in facts_all])
    orientations: dict[str, int] = {}
    for f in facts_all:
        orientations[f["orientation"]] = orientations.get(f["orientation"], 0) + 1
    summary.update(
        shape_min=shapes.min(0).tolist(),
        shape_max=shapes.max(0).tolist(),
        spacing_min=[round(float(v), 4) for v in spacings.min(0)],
        spacing_max=[round(float(v), 4) for v in spacings.max(0)],
        orientations=orientations,
        cases_with_label={str(v): sum(v in f["values"] for f in facts_all) for v in sorted(allowed) if v != 0},
    )
    return summary


def decathlon_dataset(
    root: str | os.PathLike,
    section: str = "training",
    transform: Sequence[Callable] | Callable = (),
    task: str = DEFAULT_TASK,
    **kwargs: Any,
):
    """MONAI's :class:`~monai.apps.DecathlonDataset` on a local folder (``download=False``), after the checks above.

    ``root`` may be the task folder or its parent (MONAI wants the parent). ``section`` is MONAI's: ``"training"``,
    ``"validation"`` (its own seeded ``val_frac`` split) or ``"test"``; ``kwargs`` go to ``DecathlonDataset``.
    """
    task_dir = resolve_task_dir(root, task)
    meta = read_dataset_json(task_dir)
    _check_listed_files(task_dir, meta)
    if task_dir.name != task:
        raise SynthCPInputError(f"{task_dir}: MONAI's DecathlonDataset needs the folder to be named {task}.")
    return DecathlonDataset(task_dir.parent, task=task, section=section, transform=transform, download=False, **kwargs)
