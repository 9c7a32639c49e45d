"""The label-only baseline: a segmentation's predicted size per class, the feature of a quality regressor.

Dice and IoU fall with a structure's size (a boundary error of one voxel costs a small structure a larger share of
its volume), and a class predicted large is more often really there; so how large the prediction is already says
something about its quality, without looking at the image. A failure detector that reads the image must beat this
to show that it uses it. The feature is the log of each class's predicted volume; a
:class:`~synthcp3d.scoring.regression.LinearQualityRegressor` fitted on cross-validated predictions maps it to a
quality, a class not predicted to 0 (the same rule as every other method).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.utils.arrays import to_numpy

__all__ = ["predicted_volume_feature", "predicted_volume_regressor"]


def predicted_volume_feature(pred: Any, num_classes: int, voxel_volume: float = 1.0) -> np.ndarray:
    """``log(voxel count x voxel_volume)`` of each class in a label map ``pred (*S)``: ``(C,)`` float64, NaN for a
    class with no voxel. ``voxel_volume``: e.g. mL per voxel (so that studies on different grids compare)."""
    if voxel_volume <= 0:
        raise SynthCPInputError(f"voxel_volume must be positive, got {voxel_volume}")
    labels = np.asarray(to_numpy(pred)).astype(np.int64).ravel()
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)[:num_classes]
    with np.errstate(divide="ignore"):
        feature = np.log(counts * float(voxel_volume))
    return np.where(counts > 0, feature, np.nan)


def predicted_volume_regressor(num_classes: int) -> LinearQualityRegressor:
    """An unfitted per-class linear map from :func:`predicted_volume_feature` to quality; not predicted -> 0."""
    return LinearQualityRegressor(num_classes, missing_feature_quality=0.0)
