"""K-fold cross-validated predictions: the realistic failures the comparator (and the VAE alarm's regressor) learn from.

Each of K segmenters trains on K-1 folds and predicts the held-out fold, so every training case is predicted exactly
once, by a model that never saw it (paper sec. 4: 4 folds).

On-disk layout written by `run_crossval` (all files atomic; paths inside JSON are relative to ``out_dir``)::

    out_dir/
      folds.json                  {"k", "seed", "contiguous", "folds": [[case, ...], ...],
                                   "train": [[case, ...], ...]}   fold i holds out folds[i], trains on train[i]
      fold_{i}/                   what ``train_fold_fn`` writes (e.g. model.pt, checkpoints/)
      fold_{i}/fold.json          done marker: {"fold", "train", "held_out", "predictions": [case, ...]}
      predictions/{case}_pred.{npy|nii.gz|png}   label map (uint8; int16 above 255 classes)
      predictions/{case}_prob.npz                optional softmax: "prob" float16 (C, *S), or top-k:
                                                 "indices" (k, *S), "values" float16 (k, *S), "num_classes"
      predictions/{case}_record.json             optional: what ``predict_fn`` measured on the case (features,
                                                 true quality), kept with its prediction
      manifest.json               [{"case", "fold", "image", "label", "pred", "prob", "record"}, ...]
                                  (``prob`` and ``record`` may be null)

`load_manifest` returns the manifest with absolute paths; `load_prediction` / `load_probabilities` read the files.
A rerun skips finished folds (``fold.json`` present) and already written predictions. In a distributed run (world
size > 1) every rank trains each fold; rank 0 alone predicts and writes, the others waiting at a barrier.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ignite.distributed as idist
import nibabel as nib
import numpy as np
from PIL import Image
from sklearn.model_selection import KFold
from tqdm.auto import tqdm

from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.arrays import to_numpy
from synthcp3d.utils.atomic import atomic_path, atomic_save_json

__all__ = [
    "make_folds",
    "run_crossval",
    "load_manifest",
    "load_prediction",
    "load_probabilities",
    "save_prediction",
    "save_probabilities",
]

logger = logging.getLogger(__name__)

PredFormat = Literal["npy", "nii.gz", "png"]
ProbFormat = Literal["none", "float16", "topk"]


def _check_ids(case_ids: Sequence[str]) -> list[str]:
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise SynthCPInputError(f"case ids must be unique; repeated: {dup[:5]}")
    bad = [c for c in ids if not c or "/" in c or "\\" in c or c in (".", "..")]
    if bad:
        raise SynthCPInputError(f"case id {bad[0]!r} cannot name a file (empty, or holds a path separator)")
    return ids


def _contiguous_cuts(sizes: Sequence[int], k: int) -> list[int]:
    """End indices of ``k`` non-empty contiguous runs over ``sizes`` whose totals are closest to equal.

    Exact dynamic programme minimising the sum of squared deviations from ``sum(sizes) / k`` (O(k n^2), n = number
    of groups: tiny, e.g. Cityscapes' 18 cities).
    """
    n = len(sizes)
    cum = np.concatenate([[0.0], np.cumsum(sizes, dtype=np.float64)])
    target = cum[-1] / k
    cost = np.full((k + 1, n + 1), np.inf)
    back = np.zeros((k + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for j in range(1, k + 1):
        for end in range(j, n - (k - j) + 1):
            starts = np.arange(j - 1, end)
            total = cost[j - 1, starts] + (cum[end] - cum[starts] - target) ** 2
            best = int(np.argmin(total))
            cost[j, end], back[j, end] = total[best], starts[best]
    cuts, end = [], n
    for j in range(k, 0, -1):
        cuts.append(end)
        end = int(back[j, end])
    return cuts[::-1]


def make_folds(
    case_ids: Sequence[str],
    k: int = 4,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    contiguous: bool = False,
) -> list[list[str]]:
    """Split cases into ``k`` folds; a group (city, patient) never spans two folds.

    Args:
        case_ids: unique case ids.
        k: number of folds (2 <= k <= number of cases, or of groups).
        seed: seeds the shuffle (ignored with ``contiguous``).
        groups: one group label per case; all cases of a group land in the same fold.
        contiguous: folds are consecutive runs of cases (or of groups, in order of first appearance) of near-equal
            size, as the authors split Cityscapes by city; otherwise cases (or groups) are shuffled.

    Returns:
        ``k`` lists of case ids (each in the order of ``case_ids``); every case is in exactly one.
    """
    ids = _check_ids(case_ids)
    if groups is not None and len(groups) != len(ids):
        raise SynthCPInputError(f"got {len(groups)} group labels for {len(ids)} cases")
    units: list[list[int]]  # indices of the cases of each unit (a case, or a group of cases)
    if groups is None:
        units = [[i] for i in range(len(ids))]
    else:
        order: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            order.setdefault(str(g), []).append(i)
        units = list(order.values())
    if not 2 <= k <= len(units):
        what = "groups" if groups is not None else "cases"
        raise SynthCPInputError(f"k={k} folds need 2 <= k <= {len(units)} (the number of {what})")

    if contiguous and groups is None:
        fold_units = [[units[i] for i in part] for part in np.array_split(np.arange(len(units)), k)]
    elif contiguous:
        cuts = _contiguous_cuts([len(u) for u in units], k)
        fold_units = [units[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
    elif groups is None:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(len(units)))
        fold_units = [[units[i] for i in held] for _, held in splits]
    else:
        # Seeded group split balanced by case count; hand-written because sklearn's GroupKFold only shuffles from
        # 1.6 on (we support >= 1.3). Groups are shuffled, then placed largest first into the smallest fold.
        rng = np.random.default_rng(seed)
        shuffled = [units[i] for i in rng.permutation(len(units))]
        shuffled.sort(key=len, reverse=True)  # stable: ties keep the shuffled order
        fold_units = [[] for _ in range(k)]
        sizes = [0] * k
        for unit in shuffled:
            j = int(np.argmin(sizes))
            fold_units[j].append(unit)
            sizes[j] += len(unit)
    return [[ids[i] for i in sorted(i for unit in fu for i in unit)] for fu in fold_units]


# prediction file suffix -> format name (the ``pred_format`` values of `run_crossval`)
_PRED_SUFFIXES = ((".npy", "npy"), (".nii.gz", "nii.gz"), (".nii", "nii.gz"), (".png", "png"))


def _prediction_format(path: Path) -> str:
    """The format of a prediction file from its name: ``"npy"``, ``"nii.gz"`` (also ``.nii``) or ``"png"``."""
    for suffix, fmt in _PRED_SUFFIXES:
        if path.name.endswith(suffix):
            return fmt
    raise SynthCPInputError(f"unknown prediction format for {path} (use .npy, .nii.gz or .png)")


def save_prediction(pred: Any, path: str | os.PathLike, affine: Any | None = None) -> Path:
    """Atomically write a label map ``(*S)`` (a leading singleton channel is dropped) as .npy, .nii.gz or .png."""
    path = Path(path)
    fmt = _prediction_format(path)
    arr = to_numpy(pred)
    if arr.ndim >= 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise SynthCPInputError(f"prediction for {path.name} holds non-integer values; expected class indices")
    if arr.size and (arr.min() < 0):
        raise SynthCPInputError(f"prediction for {path.name} holds negative class indices")
    if arr.size and arr.max() > np.iinfo(np.int16).max:
        raise SynthCPInputError(f"prediction for {path.name} holds class index {arr.max()}, above the int16 range")
    arr = arr.astype(np.uint8 if (arr.size == 0 or arr.max() <= 255) else np.int16)
    if fmt == "png" and (arr.ndim != 2 or arr.dtype != np.uint8):
        raise SynthCPInputError(f"{path.name}: PNG predictions must be 2D with at most 256 classes")
    if fmt == "nii.gz":  # the project's one NIfTI writer (qform/sform set, reproducible bytes)
        if arr.ndim != 3:
            raise SynthCPInputError(f"{path.name}: NIfTI predictions must be 3D, got shape {arr.shape}")
        return save_like(arr, np.eye(4) if affine is None else to_numpy(affine), path)
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, arr)
        else:
            Image.fromarray(arr).save(tmp, format="PNG")
    return path


def load_prediction(path: str | os.PathLike) -> np.ndarray:
    """Read a label map written by `save_prediction` -> integer array ``(*S)``."""
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"prediction file {path} does not exist")
    fmt = _prediction_format(path)
    if fmt == "npy":
        return np.load(path, allow_pickle=False)
    if fmt == "nii.gz":
        return np.asarray(nib.load(str(path)).dataobj)
    with Image.open(path) as image:
        return np.asarray(image)


def save_probabilities(prob: Any, path: str | os.PathLike, fmt: ProbFormat = "float16", top_k: int = 3) -> Path:
    """Atomically write a softmax ``(C, *S)`` as a compressed ``.npz``: all classes in float16, or the top-k."""
    arr = to_numpy(prob).astype(np.float32)
    if arr.ndim < 2:
        raise SynthCPInputError(f"probabilities must be (C, *S), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SynthCPInputError(f"probabilities for {Path(path).name} hold NaN or inf")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if fmt == "float16":
            np.savez_compressed(f, prob=arr.astype(np.float16))
        elif fmt == "topk":
            k = min(top_k, arr.shape[0])
            idx = np.argsort(-arr, axis=0, kind="stable")[:k]
            vals = np.take_along_axis(arr, idx, axis=0)
            idx_dtype = np.uint8 if arr.shape[0] <= 256 else np.int16
            np.savez_compressed(
                f, indices=idx.astype(idx_dtype), values=vals.astype(np.float16), num_classes=np.int64(arr.shape[0])
            )
        else:
            raise ValueError(f"prob format must be 'float16' or 'topk', got {fmt!r}")
    return path


def load_probabilities(path: str | os.PathLike) -> np.ndarray:
    """Read `save_probabilities` output -> float32 ``(C, *S)`` (classes outside a top-k get probability 0)."""
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"probability file {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        if "prob" in data:
            return data["prob"].astype(np.float32)
        idx, vals, c = data["indices"].astype(np.int64), data["values"].astype(np.float32), int(data["num_classes"])
    out = np.zeros((c, *idx.shape[1:]), dtype=np.float32)
    np.put_along_axis(out, idx, vals, axis=0)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SynthCPInputError(f"{path} cannot be read as JSON ({e})") from e


def run_crossval(
    cases: Sequence[Mapping[str, Any]],
    k: int,
    out_dir: str | os.PathLike,
    train_fold_fn: Callable[[list[dict[str, Any]], Path], Any],
    predict_fn: Callable[[Any, dict[str, Any]], Mapping[str, Any]],
    seed: int = 0,
    group_key: str | None = None,
    contiguous: bool = False,
    folds: Sequence[Sequence[str]] | None = None,
    pred_format: PredFormat = "npy",
    prob_format: ProbFormat = "none",
    top_k: int = 3,
    case_key: str = "case",
    progress: bool = True,
    restart: bool = False,
) -> list[dict[str, Any]]:
    """Train ``k`` models, each on the other folds, and predict every held-out case once; resumable.

    Args:
        cases: MONAI-style data list, one dict per case with a unique ``case_key`` id (and usually ``image``,
            ``label`` paths, copied into the manifest).
        k: number of folds.
        out_dir: output folder (layout in the module docstring).
        train_fold_fn: ``(train_cases, fold_dir) -> model``: trains on ``train_cases`` and returns whatever
            ``predict_fn`` needs (a network, a weights path). It is called again for an unfinished fold after a
            crash, so it should resume itself (e.g. `run_training` with checkpoints under ``fold_dir``). Distributed:
            called on every rank.
        predict_fn: ``(model, case) -> {"pred": label map (*S) or (1, *S), "prob": optional (C, *S),
            "affine": optional 4x4 for NIfTI, "record": optional JSON-able dict}``. Distributed: called on rank 0
            only.
        seed, group_key, contiguous: how `make_folds` splits (``group_key`` names the cases' group entry).
        folds: explicit folds (lists of case ids) instead of `make_folds`.
        pred_format: ``"npy"``, ``"nii.gz"`` (3D) or ``"png"`` (2D, < 256 classes).
        prob_format: ``"none"``, ``"float16"`` (whole softmax) or ``"topk"`` (``top_k`` classes).
        case_key: the id entry of each case.
        progress: show a progress bar over the held-out cases.
        restart: first delete every fold's folder (markers, checkpoints) and every prediction, then train and predict
            all folds again, on this split (a forced or stale stage: its settings or its folds changed); an interrupted
            restart then resumes from nothing old. ``False`` resumes, skipping the folds whose ``fold.json`` exists.

    Returns:
        the manifest entries (as in ``manifest.json``, paths relative to ``out_dir``).

    Raises:
        SynthCPInputError: duplicate/missing ids, or ``out_dir`` holds folds from a different split (unless
            ``restart``).
    """
    out_dir = Path(out_dir)
    if any(case_key not in c for c in cases):
        raise SynthCPInputError(f"every case needs a '{case_key}' entry")
    ids = _check_ids([c[case_key] for c in cases])
    by_id = {i: dict(c) for i, c in zip(ids, cases)}
    if folds is None:
        groups = None
        if group_key is not None:
            if any(group_key not in c for c in cases):
                raise SynthCPInputError(f"every case needs a '{group_key}' entry to group the folds")
            groups = [str(c[group_key]) for c in cases]
        folds = make_folds(ids, k=k, seed=seed, groups=groups, contiguous=contiguous)
    folds = [[str(c) for c in f] for f in folds]
    if len(folds) != k or sorted(c for f in folds for c in f) != sorted(ids):
        raise SynthCPInputError(f"folds must be {k} lists that together hold every case exactly once")
    train = [[c for c in ids if c not in set(f)] for f in folds]

    split = {"k": k, "seed": seed, "contiguous": contiguous, "group_key": group_key, "folds": folds, "train": train}
    main = idist.get_rank() == 0  # distributed: rank 0 alone predicts and writes
    split_path = out_dir / "folds.json"
    if split_path.is_file() and not restart:
        saved = _read_json(split_path)
        if saved.get("folds") != folds:
            raise SynthCPInputError(
                f"{split_path} holds a different fold split; use another out_dir or delete it to start over"
            )
    elif main:
        atomic_save_json(split, split_path)

    pred_dir = out_dir / "predictions"
    suffix = {"npy": ".npy", "nii.gz": ".nii.gz", "png": ".png"}.get(pred_format)
    if suffix is None:
        raise ValueError(f"pred_format must be 'npy', 'nii.gz' or 'png', got {pred_format!r}")
    if prob_format not in ("none", "float16", "topk"):
        raise ValueError(f"prob_format must be 'none', 'float16' or 'topk', got {prob_format!r}")

    def pred_path(case: str) -> Path:
        return pred_dir / f"{case}_pred{suffix}"

    def prob_path(case: str) -> Path:
        return pred_dir / f"{case}_prob.npz"

    def record_path(case: str) -> Path:
        return pred_dir / f"{case}_record.json"

    def predict_fold(model: Any, fold: int, held_out: Sequence[str]) -> None:
        todo = [
            c for c in held_out if not pred_path(c).is_file() or (prob_format != "none" and not prob_path(c).is_file())
        ]
        for case in tqdm(todo, desc=f"fold {fold + 1}/{k} predict", disable=not progress):
            out = predict_fn(model, dict(by_id[case]))
            if "pred" not in out:
                raise ValueError("predict_fn must return a dict with 'pred'")
            if prob_format != "none":
                if out.get("prob") is None:
                    raise ValueError(f"prob_format={prob_format!r} but predict_fn returned no 'prob' for {case}")
                save_probabilities(out["prob"], prob_path(case), prob_format, top_k)
            if out.get("record") is not None:  # before the prediction, whose presence marks the case done
                atomic_save_json(out["record"], record_path(case))
            save_prediction(out["pred"], pred_path(case), out.get("affine"))

    if restart:
        if main:
            for fold_dir in out_dir.glob("fold_*"):  # also those of an earlier, larger k
                shutil.rmtree(fold_dir, ignore_errors=True)
            shutil.rmtree(pred_dir, ignore_errors=True)
            pred_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "manifest.json").unlink(missing_ok=True)
            logger.info(f"cross-validation restarted: the earlier folds' outputs in {out_dir} deleted")
        idist.barrier()
    for i, (held_out, train_ids) in enumerate(zip(folds, train)):
        fold_dir = out_dir / f"fold_{i}"
        done = fold_dir / "fold.json"
        if done.is_file():
            logger.info(f"fold {i + 1}/{k}: done already ({done})")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        logger.info(f"fold {i + 1}/{k}: training on {len(train_ids)} cases in {fold_dir}")
        model = train_fold_fn([by_id[c] for c in train_ids], fold_dir)
        if main:
            predict_fold(model, i, held_out)
            atomic_save_json({"fold": i, "train": train_ids, "held_out": held_out, "predictions": held_out}, done)
            logger.info(f"fold {i + 1}/{k}: wrote {len(held_out)} predictions to {pred_dir}")
        idist.barrier()

    fold_of = {c: i for i, f in enumerate(folds) for c in f}
    manifest = []
    for case in ids:
        entry = {
            "case": case,
            "fold": fold_of[case],
            "image": by_id[case].get("image"),
            "label": by_id[case].get("label"),
            "pred": pred_path(case).relative_to(out_dir).as_posix(),
            "prob": prob_path(case).relative_to(out_dir).as_posix() if prob_format != "none" else None,
            "record": _read_json(record_path(case)) if record_path(case).is_file() else None,
        }
        manifest.append(entry)
    if main:
        atomic_save_json(manifest, out_dir / "manifest.json")
        logger.info(f"cross-validation manifest: {out_dir / 'manifest.json'} ({len(manifest)} cases)")
    return manifest


def load_manifest(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``out_dir/manifest.json`` with ``pred``/``prob`` resolved to absolute paths (checked to exist)."""
    out_dir = Path(out_dir)
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise SynthCPInputError(f"{path} does not exist: run the cross-validation first")
    entries = _read_json(path)
    for entry in entries:
        for key in ("pred", "prob"):
            if entry.get(key) is not None:
                p = Path(entry[key])
                p = p if p.is_absolute() else out_dir / p
                if not p.is_file():
                    raise SynthCPInputError(f"{path} lists {p}, which does not exist")
                entry[key] = str(p)
    return entries
