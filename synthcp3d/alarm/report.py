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
from synthcp3d.utils.atomic import atomic_save_text

__all__ = ["AlarmReport", "FLAG_RULE", "flag_case", "summary_rows", "write_summary", "SUMMARY_COLUMNS"]

FLAG_RULE = (
    "flagged when the ensemble's predicted tumour DSC (mean of SynthCP and the VAE alarm) is below the threshold, "
    "or when that prediction could not be made"
)


def flag_case(dsc: dict[str, dict[str, float | None]], threshold: float) -> bool:
    """Apply :data:`FLAG_RULE`: ``ensemble`` tumour DSC ``< threshold``; a missing/NaN prediction flags the case."""
    value = dsc.get("ensemble", {}).get("tumour")
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
        flagged: whether the case needs checking (:data:`FLAG_RULE`).
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
            "flag_rule": FLAG_RULE,
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
