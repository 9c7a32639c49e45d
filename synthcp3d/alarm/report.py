"""The per-case result of the DSC alarm (:class:`AlarmReport`) and the batch ``summary.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthcp3d.alarm.predictor import METHODS, Prediction
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_text

__all__ = [
    "AlarmReport", "FLAG_RULE", "DEFAULT_FLAG_METHOD", "flag_rule", "check_flag_method", "flag_case", "summary_rows",
    "write_summary", "SUMMARY_COLUMNS",
]

#: the predicted DSC the flag reads by default: the paper's ensemble (its Table 2 best row)
DEFAULT_FLAG_METHOD = "ensemble"
_DESCRIBED = {
    "synthcp": "SynthCP's predicted tumour DSC",
    "vae_alarm": "the VAE alarm's predicted tumour DSC",
    "ensemble": "the ensemble's predicted tumour DSC (mean of SynthCP and the VAE alarm)",
    "pairwise_dice": "the fold ensemble's pairwise tumour Dice",
    "synthcp_pairwise": "the mean of SynthCP's predicted tumour DSC and the fold ensemble's pairwise Dice",
}


def check_flag_method(method: str) -> str:
    """``method`` if the flag can read it (one of :data:`~synthcp3d.alarm.predictor.METHODS`), else a one-line error."""
    if method not in METHODS:
        raise SynthCPInputError(f"unknown flag method {method!r}: choose one of {', '.join(METHODS)}")
    return method


def flag_rule(method: str = DEFAULT_FLAG_METHOD) -> str:
    """The flag rule in words, for reports."""
    return (f"flagged when {_DESCRIBED[check_flag_method(method)]} is below the threshold, or when that prediction "
            "could not be made")


FLAG_RULE = flag_rule()


def flag_case(dsc: dict[str, dict[str, float | None]], threshold: float, method: str = DEFAULT_FLAG_METHOD) -> bool:
    """Apply :func:`flag_rule`: ``method``'s tumour DSC ``< threshold``; a missing/NaN prediction flags the case."""
    value = dsc.get(method, {}).get("tumour")
    if value is None or not math.isfinite(value):
        return True
    return bool(value < threshold)


@dataclass
class AlarmReport:
    """Everything the alarm says about one case.

    Numbers and metadata serialise with :meth:`to_json`; the arrays (on the input's own grid, shape ``(X, Y, Z)``,
    with the input's affine) do not. A case that could not be processed has ``error`` set and no arrays.

    Attributes:
        case: case id (output file names).
        source: the input path (or ``"<array>"``).
        predicted_dsc: ``{method: {"pancreas": float|None, "tumour": float|None}}`` for each of
            :data:`~synthcp3d.alarm.predictor.METHODS` (``pairwise_dice`` and ``synthcp_pairwise`` are None without
            fold models in the bundle).
        flagged: whether the case needs checking (:func:`flag_rule` of ``flag_method``).
        flag_method: the predicted DSC the flag read (:data:`DEFAULT_FLAG_METHOD` unless chosen).
        threshold: the threshold ``T`` used; ``threshold_source`` says where it came from.
        model, bundle: identity of the networks and bundle (name, version, path).
        judged: which segmentation was judged: ``{"segmentation": "bundle segmenter", ...}`` or
            ``{"segmentation": "given mask", "mask": path, "labels": {...}}``.
        seconds: time per stage and ``total``.
        affine, shape, spacing: the input grid (outputs are written on it).
        segmentation: class indices ``(X, Y, Z)`` uint8 on the input grid.
        error_probability: ``(X, Y, Z)`` float32 in [0, 1] on the input grid.
        image: the input volume ``(X, Y, Z)`` float32 as loaded.
        working: the predictor's output on its working grid (for the overview picture), or None.
        timer: the case's :class:`~synthcp3d.alarm.timing.StageTimer` (stage seconds, peak memory when measured).
        outputs: written file paths by kind, once written.
        warnings: non-fatal remarks (e.g. intensity range not CT-like).
        error: why the case failed, or None.
    """

    case: str
    source: str
    predicted_dsc: dict[str, dict[str, float | None]] = field(default_factory=dict)
    flagged: bool | None = None
    threshold: float | None = None
    threshold_source: str = ""
    flag_method: str = DEFAULT_FLAG_METHOD
    model: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    judged: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    affine: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    segmentation: np.ndarray | None = field(default=None, repr=False)
    error_probability: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    working: Prediction | None = field(default=None, repr=False)
    timer: Any = field(default=None, repr=False)
    outputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the case was processed."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of the numbers and metadata (no voxel arrays)."""
        data: dict[str, Any] = {
            "case": self.case,
            "source": self.source,
            "status": "ok" if self.ok else "failed",
            "error": self.error,
            "predicted_dsc": self.predicted_dsc,
            "flagged": self.flagged,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "flag_method": self.flag_method,
            "flag_rule": flag_rule(self.flag_method),
            "model": self.model,
            "bundle": self.bundle,
            "judged": self.judged,
            "seconds": {k: round(float(v), 4) for k, v in self.seconds.items()},
            "input": {
                "shape": list(self.shape) if self.shape is not None else None,
                "spacing": [float(s) for s in self.spacing] if self.spacing is not None else None,
                "affine": np.asarray(self.affine).tolist() if self.affine is not None else None,
            },
            "outputs": self.outputs,
            "warnings": self.warnings,
        }
        return _finite(data)

    def to_json(self, indent: int = 2) -> str:
        """The report as a JSON string (NaN written as ``null``)."""
        return json.dumps(self.to_dict(), indent=indent)


def _finite(obj: Any) -> Any:
    # JSON has no NaN: undefined predictions become null.
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


SUMMARY_COLUMNS = (
    ["case", "status", "flagged", "threshold"]
    + [f"{cls}_dsc_{method}" for cls in ("tumour", "pancreas") for method in METHODS]
    + ["seconds", "source", "judged", "report", "error"]
)


def summary_rows(reports: Sequence[AlarmReport]) -> list[dict[str, Any]]:
    """One ``summary.csv`` row per report (:data:`SUMMARY_COLUMNS`); failed cases carry their reason."""
    rows = []
    for r in reports:
        row: dict[str, Any] = {
            "case": r.case,
            "status": "ok" if r.ok else "failed",
            "flagged": "" if r.flagged is None else str(bool(r.flagged)).lower(),
            "threshold": "" if r.threshold is None else f"{r.threshold:.4f}",
            "seconds": f"{r.seconds.get('total', 0.0):.2f}",
            "source": r.source,
            "judged": r.judged.get("mask", "bundle segmenter") if r.judged else "",
            "report": r.outputs.get("report", ""),
            "error": r.error or "",
        }
        for cls in ("tumour", "pancreas"):
            for method in METHODS:
                value = r.predicted_dsc.get(method, {}).get(cls)
                row[f"{cls}_dsc_{method}"] = "" if value is None or not math.isfinite(value) else f"{value:.4f}"
        rows.append(row)
    return rows


def write_summary(reports: Sequence[AlarmReport], path: str | os.PathLike) -> Path:
    """Write ``summary.csv`` atomically (one row per case, in processing order)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(reports))
    return atomic_save_text(buffer.getvalue(), path)
