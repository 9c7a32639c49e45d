"""The judges every study fits without training a network, written once for any ``spatial_dims``.

A study's stage supplies what is its own: the data (pancreas ROIs of 3D volumes, 2D cached street images), the crop
rule of the VAE alarm's input, the quality measure (DSC or IoU) of its cross-validated predictions and where the
outputs go; these bodies do the rest.

- `fit_painter`: the class-mean painter (SPADE's non-learned replacement) -> ``models/painter.json``;
- `mc_dropout_feature`: MC-Dropout's image-level feature of one prediction (mean entropy per predicted class);
- `fit_quality_regressor`: a per-class linear map from a feature to the quality.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from synthcp3d.scoring.mc_dropout import mc_dropout_probs, mean_entropy_per_class
from synthcp3d.scoring.synthesis import ClassMeanPainter
from synthcp3d.workflows.common import StudyBase, nanmean

__all__ = ["fit_painter", "mc_dropout_feature", "fit_quality_regressor"]


def fit_painter(study: StudyBase, dataset: Dataset, image_channels: int = 1) -> ClassMeanPainter:
    """The class-mean painter on ``dataset``'s ``{"image" (Ci, *S), "label" (1, *S)}`` ground-truth pairs (read once,
    in order) -> ``models/painter.json``."""
    painter = ClassMeanPainter(study.num_classes, image_channels=image_channels)
    painter.fit((d["image"], d["label"]) for d in dataset)
    painter.save(study.models / "painter.json")
    return painter


@torch.no_grad()
def mc_dropout_feature(
    net: torch.nn.Module, x: torch.Tensor, pred: torch.Tensor, num_classes: int, samples: int, seed: int | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """MC-Dropout's feature of the prediction ``pred (1, *S)`` of ``x (1, Ci, *S)``: the mean predictive entropy of
    ``samples`` dropout passes of ``net`` inside each predicted class region ``(C,)`` (NaN: class not predicted), and
    the entropy map ``(*S)``; ``seed``: the dropout masks' (see `mc_dropout_probs`)."""
    _, entropy = mc_dropout_probs(net, x, samples=int(samples), seed=seed)
    return mean_entropy_per_class(entropy, pred, num_classes)[0].cpu().numpy(), entropy[0]


def fit_quality_regressor(regressor: Any, feats: np.ndarray, true: np.ndarray) -> tuple[Any, list[int]]:
    """Fit a per-class regressor (`synthcp3d.scoring` ``fit(feats (N, F), true (N, C))``) of the cross-validated
    qualities; a class with no usable (feature, quality) pair (left NaN by the regressor) predicts its mean CV
    quality, or 0 if it never occurs. Returns the regressor and those unfit classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        regressor.fit(feats, true)
    unfit = [int(k) for k in np.flatnonzero(np.isnan(regressor.coef))]
    for k in unfit:
        regressor.coef[k], regressor.intercept[k] = 0.0, nanmean(true[:, k]) or 0.0
    return regressor, unfit
