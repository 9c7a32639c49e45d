"""Exact pixel-level metrics: failure (error-map) detection and anomaly segmentation, ×100.

Inputs are per-image maps, either one array ``(N, *spatial)`` or a sequence of ``N`` arrays whose shapes may
differ (NumPy or torch, any device; torch tensors are moved to the CPU). Two reductions, named in every result:

- ``"pooled"``: every non-ignored pixel of the split in one ranking (Fishyscapes / SegmentMeIfYouCan, and the
  paper's AUPR / AUROC for failure detection).
- ``"per_image"``: the metric on each image, then the mean over the images where it is defined, i.e. the images
  holding both classes after ``ignore`` (StreetHazards; the authors' release averages FPR95 this way).
  ``num_images_used`` says how many images entered the mean.

Undefined cases (no positive or no negative pixel) give NaN, which ``per_image`` leaves out of the mean and
``pooled`` returns as is. Ties, constant scores and the FPR95 definition follow :mod:`synthcp3d.metrics.curves`:
constant score -> AUROC 50, AUPR = 100 × prevalence, FPR95 = 100.

This is the sort-based path, for small inputs and for checking the streaming accumulators of
:mod:`synthcp3d.metrics.streaming`; ``pooled`` holds every valid score in memory
(3.2 GiB at peak for 10^8 float32 pixels, input included).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics.curves import curve_metrics_from_counts, threshold_counts
from synthcp3d.metrics.inputs import ArrayLike, ImagesLike, check_reduction, split_images, valid_pixels

__all__ = [
    "FAILURE_KEYS",
    "ANOMALY_KEYS",
    "failure_metrics_from_counts",
    "anomaly_metrics_from_counts",
    "PerImageMean",
    "binary_curve_metrics",
    "pixel_failure_metrics",
    "anomaly_metrics",
]

FAILURE_KEYS = ("AUPR_Error", "AUPR_Success", "AUROC", "FPR95")
ANOMALY_KEYS = ("FPR95", "AUROC", "AUPR")


def _flip(counts: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return counts.flip(0) if isinstance(counts, torch.Tensor) else counts[::-1]


def failure_metrics_from_counts(errors: np.ndarray | torch.Tensor, correct: np.ndarray | torch.Tensor) -> dict:
    """Failure metrics ×100 from per-threshold counts of error and correct pixels, highest error score first.

    AUPR-Success ranks by ``-error_score`` with correct pixels positive: the same table read bottom-up.
    """
    error_side = curve_metrics_from_counts(errors, correct)
    success_side = curve_metrics_from_counts(_flip(correct), _flip(errors))
    return {
        "AUPR_Error": 100.0 * error_side["AUPR"],
        "AUPR_Success": 100.0 * success_side["AUPR"],
        "AUROC": 100.0 * error_side["AUROC"],
        "FPR95": 100.0 * error_side["FPR95"],
    }


def anomaly_metrics_from_counts(anomalous: np.ndarray | torch.Tensor, normal: np.ndarray | torch.Tensor) -> dict:
    """Anomaly metrics ×100 from per-threshold counts of anomaly and in-distribution pixels, highest score first."""
    values = curve_metrics_from_counts(anomalous, normal)
    return {key: 100.0 * values[key] for key in ANOMALY_KEYS}


class PerImageMean:
    """Running mean over images of each metric, skipping the images where it is NaN (undefined)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.reset()

    def reset(self) -> None:
        self.sums = {key: 0.0 for key in self.keys}
        self.counts = {key: 0 for key in self.keys}
        self.num_images_used = 0

    def add(self, values: dict) -> None:
        defined = [key for key in self.keys if not math.isnan(values[key])]
        for key in defined:
            self.sums[key] += values[key]
            self.counts[key] += 1
        self.num_images_used += len(defined) == len(self.keys)

    def compute(self) -> dict:
        return {key: self.sums[key] / self.counts[key] if self.counts[key] else math.nan for key in self.keys}


def _exact_image_metrics(
    score: ImagesLike,
    target: ImagesLike,
    ignore: ImagesLike | None,
    reduction: str,
    names: tuple[str, str],
    from_counts: Callable[..., dict],
    keys: tuple[str, ...],
) -> dict:
    check_reduction(reduction)
    scores, targets = split_images(score, names[0]), split_images(target, names[1])
    ignores = [None] * len(scores) if ignore is None else split_images(ignore, "ignore")
    if not len(scores) == len(targets) == len(ignores):
        raise SynthCPInputError(
            f"{names[0]}, {names[1]} and ignore hold different numbers of images: "
            f"{len(scores)}, {len(targets)}, {len(ignores) if ignore is not None else '-'}"
        )
    progress = tqdm(range(len(scores)), desc=f"{reduction} metrics", leave=False, disable=None if scores else True)
    if reduction == "per_image":
        mean = PerImageMean(keys)
        for i in progress:
            s, t = valid_pixels(scores[i], targets[i], ignores[i], names, f" (image {i})", device="cpu")
            mean.add(from_counts(*threshold_counts(s.numpy(), t.numpy())))
        return {**mean.compute(), "reduction": reduction, "num_images_used": mean.num_images_used}
    parts = [valid_pixels(scores[i], targets[i], ignores[i], names, f" (image {i})", device="cpu") for i in progress]
    used = sum(s.numel() > 0 for s, _ in parts)
    if len(parts) == 1:
        pooled_score, pooled_target = parts[0][0].numpy(), parts[0][1].numpy()
    else:
        pooled_score = np.concatenate([s.numpy() for s, _ in parts]) if parts else np.zeros(0)
        pooled_target = np.concatenate([t.numpy() for _, t in parts]) if parts else np.zeros(0, dtype=bool)
    del parts
    return {
        **from_counts(*threshold_counts(pooled_score, pooled_target)),
        "reduction": reduction,
        "num_images_used": used,
    }


def binary_curve_metrics(score: ArrayLike, target: ArrayLike, ignore: ArrayLike | None = None) -> dict:
    """AUPR, AUROC and FPR95 (×100) of one ranking, all elements pooled whatever the shape.

    Args:
        score: scores of any shape, higher = more likely positive.
        target: same shape, bool or 0/1, True = positive.
        ignore: optional bool mask, same shape, of elements to leave out.

    Returns:
        ``{"AUPR", "AUROC", "FPR95"}``, NaN when there is no positive or no negative.
    """
    s, t = valid_pixels(score, target, ignore, ("score", "target"), device="cpu")
    values = curve_metrics_from_counts(*threshold_counts(s.numpy(), t.numpy()))
    return {key: 100.0 * value for key, value in values.items()}


def pixel_failure_metrics(
    error_score: ImagesLike, error: ImagesLike, ignore: ImagesLike | None = None, reduction: str = "pooled"
) -> dict:
    """Pixel-level failure-detection metrics (paper Table 1): AUPR-Error, AUPR-Success, AUROC, FPR95, ×100.

    Args:
        error_score: ``(N, *spatial)`` or ``N`` per-image arrays; higher = more likely wrongly segmented.
        error: same layout, bool or 0/1; 1 = wrongly segmented pixel (positive for AUPR-Error, AUROC, FPR95).
        ignore: optional bool masks, same layout, of pixels to exclude (ignore label).
        reduction: ``"pooled"`` (all pixels together) or ``"per_image"`` (mean over images holding both error
            and correct pixels).

    Returns:
        ``{"AUPR_Error", "AUPR_Success", "AUROC", "FPR95", "reduction", "num_images_used"}``. AUPR-Success
        ranks by ``-error_score`` with correct pixels positive; FPR95 is the share of correct pixels flagged at
        the first threshold flagging >= 95% of the error pixels.
    """
    return _exact_image_metrics(
        error_score, error, ignore, reduction, ("error_score", "error"), failure_metrics_from_counts, FAILURE_KEYS
    )


def anomaly_metrics(
    anomaly_score: ImagesLike,
    is_anomaly: ImagesLike,
    ignore: ImagesLike | None = None,
    reduction: str = "per_image",
) -> dict:
    """Anomaly-segmentation metrics (paper Table 3): FPR95, AUROC, AUPR with anomaly pixels positive, ×100.

    Args:
        anomaly_score: ``(N, *spatial)`` or ``N`` per-image arrays; higher = more likely anomalous.
        is_anomaly: same layout, bool or 0/1; 1 = anomaly pixel.
        ignore: optional bool masks of pixels to exclude (void pixels for Fishyscapes / SegmentMeIfYouCan).
        reduction: ``"per_image"`` (StreetHazards: mean over images holding both anomaly and normal pixels; the
            others are skipped) or ``"pooled"`` (Fishyscapes / SegmentMeIfYouCan: all pixels together).

    Returns:
        ``{"FPR95", "AUROC", "AUPR", "reduction", "num_images_used"}``.
    """
    return _exact_image_metrics(
        anomaly_score,
        is_anomaly,
        ignore,
        reduction,
        ("anomaly_score", "is_anomaly"),
        anomaly_metrics_from_counts,
        ANOMALY_KEYS,
    )
