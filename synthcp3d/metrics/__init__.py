"""Evaluation metrics of the three studies, every value ×100 as in the paper's tables.

- :func:`quality_metrics`: image-level quality regression (MAE, STD, P.C., S.C.), per class then averaged.
- :func:`pixel_failure_metrics`: pixel-level failure detection (AUPR-Error, AUPR-Success, AUROC, FPR95).
- :func:`anomaly_metrics`: anomaly segmentation (FPR95, AUROC, AUPR).
- :func:`risk_coverage`: AURC and E-AURC of an image-level quality predictor.
- :class:`StreamingBinaryCurve`, :class:`StreamingPixelFailureMetrics`, :class:`StreamingAnomalyMetrics`:
  the same in fixed memory, one image at a time, on CPU or GPU (for 10^9-pixel splits).

Pixel metrics take a ``reduction``: ``"pooled"`` or ``"per_image"``, echoed in every result. Degenerate and tie
cases are defined once in :mod:`synthcp3d.metrics.curves`.
"""

from __future__ import annotations

from synthcp3d.metrics.curves import RECALL_LEVEL, curve_metrics_from_counts, threshold_counts
from synthcp3d.metrics.pixel import anomaly_metrics, binary_curve_metrics, pixel_failure_metrics
from synthcp3d.metrics.quality import STD_DDOF, quality_metrics
from synthcp3d.metrics.risk_coverage import risk_coverage, risk_coverage_curve
from synthcp3d.metrics.streaming import (
    DEFAULT_MAX_BINS,
    StreamingAnomalyMetrics,
    StreamingBinaryCurve,
    StreamingPixelFailureMetrics,
    check_max_bins,
)

__all__ = [
    "RECALL_LEVEL",
    "STD_DDOF",
    "quality_metrics",
    "binary_curve_metrics",
    "pixel_failure_metrics",
    "anomaly_metrics",
    "risk_coverage",
    "risk_coverage_curve",
    "StreamingBinaryCurve",
    "StreamingPixelFailureMetrics",
    "StreamingAnomalyMetrics",
    "DEFAULT_MAX_BINS",
    "check_max_bins",
    "curve_metrics_from_counts",
    "threshold_counts",
]
