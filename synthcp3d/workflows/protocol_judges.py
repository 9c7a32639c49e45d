"""The judges every study fits without training a network, written once for any ``spatial_dims``.

A study's stage supplies what is its own: the data (pancreas ROIs of 3D volumes, 2D cached street images), the crop
rule of the VAE alarm's input, the quality measure (DSC or IoU) of its cross-validated predictions and where the
outputs go; these bodies do the rest.

- `fit_painter`: the class-mean painter (SPADE's non-learned replacement) -> ``models/painter.json``;
- `mc_dropout_feature`: MC-Dropout's image-level feature of one prediction (mean entropy per predicted class);
- `fit_quality_regressor`: a per-class linear map from a feature to the quality;
- `fit_cv_regressors`: the MC-Dropout and predicted-size regressors of a segmenter's cross-validated predictions;
- `fit_vae_alarm_regressor`: the VAE alarm's regressor of the mask VAE's feature of those predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from tqdm.auto import tqdm

from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor, mc_dropout_probs, mean_entropy_per_class
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.scoring.synthesis import ClassMeanPainter
from synthcp3d.scoring.vae_alarm import per_class_vae_feature
from synthcp3d.scoring.volume import predicted_volume_regressor
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import StudyBase, nanmean

__all__ = ["fit_painter", "mc_dropout_feature", "fit_quality_regressor", "fit_cv_regressors", "fit_vae_alarm_regressor"]


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


def fit_cv_regressors(
    num_classes: int, true: np.ndarray, mc_features: np.ndarray, size_features: np.ndarray, mc_path: Path,
    size_path: Path,
) -> list[int]:
    """The regressors of a segmenter's cross-validated predictions, each per class onto their true quality ``true
    (N, C)`` (NaN: undefined): MC-Dropout's (`MCDropoutQualityRegressor` of ``mc_features (N, C)``) -> ``mc_path``
    and the label-only baseline's (`predicted_volume_regressor` of ``size_features (N, C)``, log predicted volume or
    area) -> ``size_path``. Returns the classes MC-Dropout's regressor could not fit."""
    mc, unfit = fit_quality_regressor(MCDropoutQualityRegressor(num_classes), mc_features, true)
    atomic_save_json(mc.state_dict(), mc_path)
    size, _ = fit_quality_regressor(predicted_volume_regressor(num_classes), size_features, true)
    atomic_save_json(size.state_dict(), size_path)
    return unfit


def fit_vae_alarm_regressor(
    study: StudyBase, vae: torch.nn.Module, masks: Iterable[torch.Tensor], true: np.ndarray, path: Path,
    feature: str = "loss",
    record: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The VAE alarm's regressor: the mask VAE's ``feature`` (``"loss"`` as published, or ``"dice"``; see
    `per_class_vae_feature`) of each cross-validated prediction's VAE input ``masks`` (one-hot ``(1, C, *vae_shape)``,
    cropped by the study's rule) regressed, linear per class, onto its true quality ``true (N, C)`` -> ``path``
    (with ``vae_feature`` and the entries of ``record``, e.g. the crop's settings that scoring must repeat). Returns
    the features ``(N, C)``."""
    vae.eval()
    with torch.no_grad():
        masks = tqdm(masks, desc="VAE features", total=len(true), disable=not study.progress)
        feats = np.array([per_class_vae_feature(vae, m, feature) for m in masks], dtype=np.float64)
    regressor, _ = fit_quality_regressor(
        LinearQualityRegressor(study.num_classes, missing_feature_quality=0.0), feats, true
    )
    atomic_save_json({**regressor.state_dict(), "vae_feature": feature, **dict(record or {})}, path)
    return feats
