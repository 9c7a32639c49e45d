"""Image-level quality regression metrics (paper Tables 1-2): MAE, STD, Pearson and Spearman correlation, ×100.

Inputs are predicted and true per-class quality (IoU or DSC as fractions) of shape ``(N images, C classes)``,
or ``(N,)`` for one class. NaN in ``true`` marks an undefined quality (class absent from both label and
prediction): that image/class pair is excluded and counted. Each metric is computed per class over the images
where the class is defined, then averaged over the classes where it is defined:

- MAE = mean of ``|predicted - true|``;
- STD = standard deviation of ``|predicted - true|`` with ``ddof=0`` (population, NumPy's ``np.std`` default);
- PC = Pearson correlation (``scipy.stats.pearsonr``), SC = Spearman correlation (``scipy.stats.spearmanr``).

A class with no defined value is left out of every metric; a class with fewer than 2 defined values, or whose
predicted or true values are all equal (correlation undefined), is left out of PC and SC. Each exclusion is
listed in ``excluded`` with its reason. A metric with no class left is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from synthcp3d.errors import SynthCPInputError

__all__ = ["STD_DDOF", "quality_metrics"]

STD_DDOF = 0
"""Delta degrees of freedom of STD (population standard deviation, as ``np.std``)."""

_KEYS = ("MAE", "STD", "PC", "SC")
_FRACTION_TOL = 1e-6  # rounding slack on the [0, 1] range of a true quality


def _as_matrix(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SynthCPInputError(f"{name} could not be read as a numeric array: {exc}") from exc
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise SynthCPInputError(f"{name} must have shape (N images, C classes) or (N,), got {matrix.shape}")
    return matrix


def quality_metrics(predicted: Any, true: Any, class_names: Sequence[str] | None = None) -> dict:
    """MAE, STD, PC and SC (×100) between predicted and true per-class quality.

    Args:
        predicted: ``(N, C)`` or ``(N,)`` predicted quality (NumPy, torch or nested lists).
        true: same shape; NaN = undefined for that image/class (excluded and counted).
        class_names: optional ``C`` names used in ``per_class`` and ``excluded`` (default: class indices).

    Returns:
        ``{"MAE", "STD", "PC", "SC"}`` floats ×100 (mean over classes), plus
        ``per_class``: a list of ``{"class", "num_values", "num_undefined", "MAE", "STD", "PC", "SC"}`` (NaN where
        undefined),
        ``excluded``: a list of ``{"class", "metrics", "reason"}`` for each class left out of some metric,
        ``num_values`` (defined pairs used) and ``num_undefined`` (NaN pairs in ``true``, excluded).

    Raises:
        SynthCPInputError: shapes differ, or ``predicted`` is NaN/inf where ``true`` is defined, or ``true`` is inf
            or outside [0, 1] (percentages instead of fractions).
    """
    pred = _as_matrix(predicted, "predicted")
    target = _as_matrix(true, "true")
    if pred.shape != target.shape:
        raise SynthCPInputError(f"predicted has shape {pred.shape} but true has shape {target.shape}")
    num_classes = target.shape[1]
    if class_names is None:
        names: list[Any] = list(range(num_classes))
    else:
        names = list(class_names)
        if len(names) != num_classes:
            raise SynthCPInputError(f"class_names has {len(names)} names for {num_classes} classes")
    defined = ~np.isnan(target)
    if np.isinf(target).any():
        raise SynthCPInputError("true holds infinite values; use NaN for an undefined quality")
    outside = defined & ((target < -_FRACTION_TOL) | (target > 1 + _FRACTION_TOL))
    if outside.any():
        raise SynthCPInputError(
            f"true holds {int(outside.sum())} value(s) outside [0, 1] (e.g. {target[outside][0]:g}); qualities are "
            "fractions (IoU / DSC), not percentages"
        )
    bad = defined & ~np.isfinite(pred)
    if bad.any():
        image, cls = np.argwhere(bad)[0]
        raise SynthCPInputError(
            f"predicted holds NaN or inf at {int(bad.sum())} image/class pair(s) where true is defined, "
            f"first at image {int(image)}, class {names[cls]!r}"
        )

    per_class, excluded = [], []
    for c in range(num_classes):
        mask = defined[:, c]
        x, y = pred[mask, c], target[mask, c]
        row = {
            "class": names[c],
            "num_values": int(mask.sum()),
            "num_undefined": int((~mask).sum()),
            **{key: math.nan for key in _KEYS},
        }
        if x.size == 0:
            excluded.append({"class": names[c], "metrics": list(_KEYS), "reason": "no image where it is defined"})
            per_class.append(row)
            continue
        absolute = np.abs(x - y)
        row["MAE"] = 100.0 * float(np.mean(absolute))
        row["STD"] = 100.0 * float(np.std(absolute, ddof=STD_DDOF))
        if x.size < 2:
            reason = f"fewer than 2 defined values ({x.size})"
        elif np.all(x == x[0]) or np.all(y == y[0]):
            reason = "constant " + ("predicted" if np.all(x == x[0]) else "true") + " values (correlation undefined)"
        else:
            reason = ""
            row["PC"] = 100.0 * float(stats.pearsonr(x, y).statistic)
            row["SC"] = 100.0 * float(stats.spearmanr(x, y).statistic)
        if reason:
            excluded.append({"class": names[c], "metrics": ["PC", "SC"], "reason": reason})
        per_class.append(row)

    summary = {}
    for key in _KEYS:
        values = [row[key] for row in per_class if not math.isnan(row[key])]
        summary[key] = float(np.mean(values)) if values else math.nan
    return {
        **summary,
        "per_class": per_class,
        "excluded": excluded,
        "num_values": int(defined.sum()),
        "num_undefined": int((~defined).sum()),
    }
