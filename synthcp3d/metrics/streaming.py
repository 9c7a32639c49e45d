"""Streaming pixel metrics in fixed memory: feed images one at a time, never hold every pixel's score.

- :class:`StreamingBinaryCurve`: two int64 histograms (positives, negatives) over ``num_bins`` equal-width score
  bins on ``score_range``; AUPR / AUROC / FPR95 are then computed exactly as in
  :mod:`synthcp3d.metrics.curves` with one threshold per bin. It therefore equals the exact metric of the scores
  rounded to their bin (bit for bit when every score is a bin centre, see :meth:`StreamingBinaryCurve.bin_centers`),
  and differs from the exact metric of continuous scores only by the within-bin ties: with 2**16 bins on
  scores spread over (0, 1) the difference is typically below 0.01 points and bounded in the tests by 0.5 points.
  **Scores outside ``score_range`` are clamped into the first / last bin** (so ±inf is allowed, NaN is not):
  give the range of your scores (e.g. ``(0, 1)`` for probabilities, ``(0, 2)`` for ``1 - cos``).
  Memory: ``2 * num_bins`` int64 counts (1 MiB at 2**16 bins) plus a bounded work buffer
  (:data:`CHUNK_PIXELS` pixels at a time), whatever the number of pixels.
- :class:`StreamingPixelFailureMetrics` / :class:`StreamingAnomalyMetrics`: the same keys as
  :func:`~synthcp3d.metrics.pixel.pixel_failure_metrics` / :func:`~synthcp3d.metrics.pixel.anomaly_metrics`.
  ``"pooled"`` goes through the histograms (AUPR-Success reads the same histograms in reverse);
  ``"per_image"`` computes each image exactly (sort-based) as it arrives and keeps only a running mean, so it is
  equal to the exact ``per_image`` result (bit for bit on CPU, to ~1e-12 on CUDA where the final sums run in a
  different order). Memory is bounded by one image.

Everything runs on the histograms' device (``device``, or the device of the first scores given). Counts are
integers, so the pooled result is identical on CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics.curves import curve_metrics_from_counts, threshold_counts, threshold_counts_torch
from synthcp3d.metrics.inputs import ImagesLike, check_reduction, split_images, valid_pixels
from synthcp3d.metrics.pixel import (
    ANOMALY_KEYS,
    FAILURE_KEYS,
    PerImageMean,
    anomaly_metrics_from_counts,
    failure_metrics_from_counts,
)

__all__ = ["CHUNK_PIXELS", "StreamingBinaryCurve", "StreamingPixelFailureMetrics", "StreamingAnomalyMetrics"]

CHUNK_PIXELS = 1 << 22
"""Pixels binned at a time: bounds the float64 / int64 work buffers (~100 MiB) whatever the image size."""


class StreamingBinaryCurve:
    """AUPR, AUROC and FPR95 (×100) of one pooled ranking from fixed-size score histograms.

    Args:
        num_bins: number of equal-width score bins (thresholds); 2**16 by default.
        score_range: ``(lo, hi)``; scores below ``lo`` / above ``hi`` are clamped into the first / last bin.
        device: where the histograms live; ``None`` = the device of the first scores passed to :meth:`update`.

    Example:
        >>> curve = StreamingBinaryCurve(num_bins=1024)
        >>> for score, target in images:  # doctest: +SKIP
        ...     curve.update(score, target)
        >>> curve.compute()  # doctest: +SKIP
        {'AUPR': ..., 'AUROC': ..., 'FPR95': ...}
    """

    def __init__(
        self,
        num_bins: int = 1 << 16,
        score_range: tuple[float, float] = (0.0, 1.0),
        device: torch.device | str | None = None,
    ) -> None:
        if int(num_bins) < 1:
            raise SynthCPInputError(f"num_bins must be a positive integer, got {num_bins!r}")
        low, high = (float(v) for v in score_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SynthCPInputError(f"score_range must be finite (lo, hi) with lo < hi, got {score_range!r}")
        self.num_bins = int(num_bins)
        self.score_range = (low, high)
        self.device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self.histogram: torch.Tensor | None = None
        if self.device is not None:
            self.histogram = torch.zeros(self.num_bins, 2, dtype=torch.int64, device=self.device)

    def bin_centers(self) -> torch.Tensor:
        """``(num_bins,)`` float64 centre of each bin; scores equal to these are binned without loss."""
        low, high = self.score_range
        return low + (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) * ((high - low) / self.num_bins)

    def bin_index(self, score: torch.Tensor) -> torch.Tensor:
        """``(P,)`` scores -> ``(P,)`` int64 bin indices, out-of-range scores clamped to the end bins."""
        low, high = self.score_range
        scaled = score.to(torch.float64, copy=True)  # float64: exact bin edges for float32 scores
        scaled.sub_(low).mul_(self.num_bins / (high - low)).floor_().clamp_(0, self.num_bins - 1)
        return scaled.long()

    def update(self, score: Any, target: Any, ignore: Any = None) -> int:
        """Add every non-ignored element of one image (any shape) to the histograms.

        Args:
            score: ``(*spatial)`` scores, higher = more likely positive.
            target: same shape, bool or 0/1, True = positive.
            ignore: optional same-shape bool mask of pixels to leave out.

        Returns:
            The number of pixels added.
        """
        flat_score, flat_target = valid_pixels(score, target, ignore, device=self.device)
        self.add_pixels(flat_score, flat_target)
        return flat_score.numel()

    def add_pixels(self, score: torch.Tensor, target: torch.Tensor) -> None:
        """Add already-checked ``(P,)`` scores (no NaN) and ``(P,)`` bool targets to the histograms."""
        if self.histogram is None:
            self.device = score.device
            self.histogram = torch.zeros(self.num_bins, 2, dtype=torch.int64, device=self.device)
        score, target = score.to(self.device), target.to(self.device)
        flat = self.histogram.view(-1)
        for start in range(0, score.numel(), CHUNK_PIXELS):
            stop = start + CHUNK_PIXELS
            # One bincount fills both columns: index 2*bin + target.
            index = self.bin_index(score[start:stop]).mul_(2).add_(target[start:stop])
            flat += torch.bincount(index, minlength=2 * self.num_bins)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positives, negatives)``: CPU int64 ``(num_bins,)`` counts per bin, highest bin first."""
        if self.histogram is None:
            empty = torch.zeros(self.num_bins, dtype=torch.int64)
            return empty, empty
        histogram = self.histogram.cpu().flip(0)
        return histogram[:, 1].contiguous(), histogram[:, 0].contiguous()

    def compute(self) -> dict:
        """``{"AUPR", "AUROC", "FPR95"}`` ×100 with one threshold per bin; NaN without positives or negatives."""
        values = curve_metrics_from_counts(*self.counts())
        return {key: 100.0 * value for key, value in values.items()}


class _StreamingImageMetrics:
    """Pooled (histogram) or per-image (exact, running mean) image-stream metrics.

    Subclasses set ``keys``, ``names`` (of score and target in messages), ``default_reduction`` (used when
    ``reduction`` is ``None``) and ``from_counts``.
    """

    keys: tuple[str, ...] = ()
    names: tuple[str, str] = ("score", "target")
    default_reduction = "pooled"
    #: ``(positives, negatives) -> metrics x100``, the subclass' table reader (a staticmethod).
    from_counts: Callable[[Any, Any], dict]

    def __init__(
        self,
        reduction: str | None = None,
        num_bins: int = 1 << 16,
        score_range: tuple[float, float] = (0.0, 1.0),
        device: torch.device | str | None = None,
    ) -> None:
        self.reduction = check_reduction(self.default_reduction if reduction is None else reduction)
        self.curve = StreamingBinaryCurve(num_bins, score_range, device)
        self.per_image = PerImageMean(self.keys)
        self.num_images = 0
        self.num_pooled_images = 0

    def reset(self) -> None:
        """Forget every image seen so far."""
        self.curve.reset()
        self.per_image.reset()
        self.num_images = 0
        self.num_pooled_images = 0

    def update(self, score: Any, target: Any, ignore: Any = None) -> None:
        """Add one image: ``score``, ``target`` and optional ``ignore`` of the same shape ``(*spatial)``."""
        where = f" (image {self.num_images})"
        flat_score, flat_target = valid_pixels(score, target, ignore, self.names, where, device=self.curve.device)
        self.num_images += 1
        if self.reduction == "pooled":
            self.curve.add_pixels(flat_score, flat_target)
            self.num_pooled_images += flat_score.numel() > 0
            return
        if flat_score.device.type == "cpu":
            # Same NumPy path as the exact functions, so the CPU result matches them bit for bit.
            counts = threshold_counts(flat_score.numpy(), flat_target.numpy())
        else:
            counts = threshold_counts_torch(flat_score, flat_target)
        self.per_image.add(self.from_counts(*counts))

    def update_batch(self, scores: ImagesLike, targets: ImagesLike, ignores: ImagesLike | None = None) -> None:
        """Add a batch ``(B, *spatial)`` (or a sequence of images) image by image."""
        scores_list, targets_list = split_images(scores, self.names[0]), split_images(targets, self.names[1])
        ignores_list = [None] * len(scores_list) if ignores is None else split_images(ignores, "ignore")
        if not len(scores_list) == len(targets_list) == len(ignores_list):
            raise SynthCPInputError(f"{self.names[0]}, {self.names[1]} and ignore hold different numbers of images")
        for score, target, ignore in zip(scores_list, targets_list, ignores_list):
            self.update(score, target, ignore)

    def compute(self) -> dict:
        """The metrics (×100) of every image added so far, with ``reduction`` and ``num_images_used``."""
        if self.reduction == "pooled":
            values, used = self.from_counts(*self.curve.counts()), self.num_pooled_images
        else:
            values, used = self.per_image.compute(), self.per_image.num_images_used
        return {**values, "reduction": self.reduction, "num_images_used": used}


class StreamingPixelFailureMetrics(_StreamingImageMetrics):
    """Streaming :func:`~synthcp3d.metrics.pixel.pixel_failure_metrics`: AUPR_Error, AUPR_Success, AUROC, FPR95.

    Args:
        reduction: ``"pooled"`` (default: histograms over all pixels) or ``"per_image"`` (exact per image, then
            the mean over images holding both error and correct pixels).
        num_bins: histogram bins for ``"pooled"``.
        score_range: ``(lo, hi)`` of the error scores for ``"pooled"``; values outside are clamped.
        device: where the work runs; ``None`` = the device of the first scores.

    :meth:`update` takes one image ``(error_score, error, ignore=None)``, error = 1 for a wrongly segmented pixel.
    """

    keys = FAILURE_KEYS
    names = ("error_score", "error")
    default_reduction = "pooled"
    from_counts = staticmethod(failure_metrics_from_counts)


class StreamingAnomalyMetrics(_StreamingImageMetrics):
    """Streaming :func:`~synthcp3d.metrics.pixel.anomaly_metrics`: FPR95, AUROC, AUPR, anomaly pixels positive.

    Args:
        reduction: ``"per_image"`` (default: StreetHazards) or ``"pooled"`` (Fishyscapes / SegmentMeIfYouCan).
        num_bins: histogram bins for ``"pooled"``.
        score_range: ``(lo, hi)`` of the anomaly scores for ``"pooled"``; values outside are clamped.
        device: where the work runs; ``None`` = the device of the first scores.

    :meth:`update` takes one image ``(anomaly_score, is_anomaly, ignore=None)``.
    """

    keys = ANOMALY_KEYS
    names = ("anomaly_score", "is_anomaly")
    default_reduction = "per_image"
    from_counts = staticmethod(anomaly_metrics_from_counts)
