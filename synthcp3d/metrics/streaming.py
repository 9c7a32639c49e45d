"""Streaming pixel metrics in fixed memory: feed images one at a time, never hold every pixel's score.

- :class:`StreamingBinaryCurve`: a table of (negatives, positives) counts per distinct float32 score; AUPR / AUROC
  / FPR95 are then computed exactly as in :mod:`synthcp3d.metrics.curves` with one threshold per table row. Up to
  ``max_bins`` distinct scores (2**20 by default) the result is the exact metric of the float32 scores; beyond, every
  score is rounded to fewer mantissa bits, so that each bin spans the same *relative* width at every magnitude (a
  softmax score saturated near 1e-9 is ranked as finely, for its size, as one near 0.5 — equal-width bins on a
  chosen range put every score below the first bin edge into one bin, and any score outside the range into an end
  bin). Scores are ranked as float32: float64 or integer scores that differ only below float32 precision tie.
  Memory, whatever the number of pixels: the table (at most ``max_bins`` rows of 24 bytes, 24 MiB by default),
  fewer than ``max_bins + CHUNK_PIXELS`` rows waiting to be merged into it, the work buffers of one chunk
  (:data:`CHUNK_PIXELS` pixels) and the copies of one image's scores: about 0.3 GB of growth measured at the
  defaults on images of 10**7 pixels.
- :class:`StreamingPixelFailureMetrics` / :class:`StreamingAnomalyMetrics`: the same keys as
  :func:`~synthcp3d.metrics.pixel.pixel_failure_metrics` / :func:`~synthcp3d.metrics.pixel.anomaly_metrics`.
  ``"pooled"`` goes through the table (AUPR-Success reads the same table in reverse);
  ``"per_image"`` computes each image exactly (sort-based) as it arrives and keeps only a running mean, so it is
  equal to the exact ``per_image`` result (bit for bit on CPU, to ~1e-12 on CUDA where the final sums run in a
  different order). Memory is bounded by one image.

Everything runs on the table's device (``device``, or the device of the first scores given). Counts are integers,
so the pooled result is identical on CPU and CUDA.

Why by hand: MONAI's and ignite's ROC-AUC / average-precision metrics (and scikit-learn's) keep every score, which
pooled over a test set of full-resolution images does not fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
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

__all__ = [
    "CHUNK_PIXELS",
    "DEFAULT_MAX_BINS",
    "StreamingBinaryCurve",
    "StreamingPixelFailureMetrics",
    "StreamingAnomalyMetrics",
    "check_max_bins",
    "float_order_keys",
]

CHUNK_PIXELS = 1 << 20
"""Pixels keyed at a time: bounds the int64 work buffers whatever the image size."""

MAX_PENDING_CHUNKS = 256
"""Chunks kept waiting before a merge even if their rows are few (a stream of small images)."""

DEFAULT_MAX_BINS = 1 << 20
"""Distinct score bins a pooled curve keeps (24 MiB of int64 keys and counts) before it coarsens them."""

MANTISSA_BITS = 23
"""float32 mantissa bits: at this precision every float32 value is a bin of its own."""


def check_max_bins(value: Any, name: str = "max_bins") -> int:
    """``value`` as the bins a curve may keep (an integer >= 512, the (sign, exponent) pairs of float32), or a
    `SynthCPInputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 512:
        raise SynthCPInputError(f"{name} must be an integer >= 512, got {value!r}")
    return int(value)


def float_order_keys(score: torch.Tensor, precision_bits: int = MANTISSA_BITS) -> torch.Tensor:
    """``(P,)`` scores -> ``(P,)`` int64 keys in score order: the float32 pattern made order-preserving (positive
    floats above every negative one, negative patterns reversed), its last ``23 - precision_bits`` mantissa bits
    dropped. Equal keys = the same bin; -0.0 is keyed as +0.0; float64 scores round to float32 first (the
    ranking is kept up to ties)."""
    bits = (score.to(torch.float32) + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    ordered = torch.where(bits >= 0, bits + (1 << 31), -1 - bits)
    return ordered >> (MANTISSA_BITS - precision_bits)


def _sum_by_key(keys: torch.Tensor, counts: torch.Tensor, presorted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K,)`` keys and ``(K, 2)`` counts -> the distinct keys, ascending, and their ``(K', 2)`` summed counts."""
    if not presorted:
        keys, order = torch.sort(keys)
        counts = counts[order]
    distinct, inverse = torch.unique_consecutive(keys, return_inverse=True)
    return distinct, counts.new_zeros(distinct.numel(), 2).index_add_(0, inverse, counts)


class StreamingBinaryCurve:
    """AUPR, AUROC and FPR95 (×100) of one pooled ranking, from a bounded table of per-score counts.

    The table holds (negatives, positives) per distinct float32 score, so the result equals the exact metric of
    the float32 scores, until more than ``max_bins`` distinct scores have been seen; then every score is rounded to
    fewer mantissa bits (``precision_bits``, one bit at a time, 23 = exact) until the table fits. A bin then spans
    ``2**-precision_bits`` of its scores' magnitude, at every magnitude: a softmax score saturated at 1e-9 is
    ranked as finely, relative to its size, as one at 0.5, and no score range has to be chosen (any real, ±inf
    included, is ranked; nothing is clamped). The final precision is the largest at which all the scores seen fit
    in ``max_bins`` bins: it does not depend on their order or on how they were cut into images.

    Args:
        max_bins: distinct bins kept, at least 512 (24 bytes each); 2**20 by default.
        device: where the table lives; ``None`` = the device of the first scores passed to :meth:`update`.

    Example:
        >>> curve = StreamingBinaryCurve()
        >>> for score, target in images:  # doctest: +SKIP
        ...     curve.update(score, target)
        >>> curve.compute()  # doctest: +SKIP
        {'AUPR': ..., 'AUROC': ..., 'FPR95': ...}
    """

    def __init__(self, max_bins: int = DEFAULT_MAX_BINS, device: torch.device | str | None = None) -> None:
        self.max_bins = check_max_bins(max_bins)
        self._device = None if device is None else torch.device(device)  # None: the first scores' device
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far (and an inferred device)."""
        self.device = self._device
        self.precision_bits = MANTISSA_BITS
        #: ``(K,)`` int64 keys (:func:`float_order_keys` at ``precision_bits``), ascending, and their ``(K, 2)``
        #: int64 counts (negatives, positives); the keys of pending chunks are merged in when they add up to
        #: ``max_bins`` rows, so that a stream of small images does not re-sort the table each time.
        self.keys = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.table = torch.zeros(0, 2, dtype=torch.int64, device=self.device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_rows = 0

    def update(self, score: Any, target: Any, ignore: Any = None) -> int:
        """Add every non-ignored element of one image (any shape) to the table.

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
        """Add already-checked ``(P,)`` scores (no NaN) and ``(P,)`` bool targets to the table."""
        if self.device is None:
            self.device = score.device
            self.keys, self.table = self.keys.to(self.device), self.table.to(self.device)
        score, target = score.to(self.device), target.to(self.device)
        for start in range(0, score.numel(), CHUNK_PIXELS):
            stop = start + CHUNK_PIXELS
            # One unique counts both columns: key 2 * bin + target.
            keyed = float_order_keys(score[start:stop], self.precision_bits).mul_(2).add_(target[start:stop])
            distinct, counts = torch.unique(keyed, return_counts=True)
            table = torch.zeros(distinct.numel(), 2, dtype=torch.int64, device=self.device)
            table[torch.arange(distinct.numel(), device=self.device), distinct & 1] = counts
            self._pending.append((distinct >> 1, table))
            self._pending_rows += distinct.numel()
            if self._pending_rows >= self.max_bins or len(self._pending) >= MAX_PENDING_CHUNKS:
                self._merge()

    def _merge(self) -> None:
        """Fold the pending chunks into the table, coarsening it while it holds more than ``max_bins`` rows."""
        if not self._pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self._pending])
        table = torch.cat([self.table] + [t for _, t in self._pending])
        self._pending, self._pending_rows = [], 0
        keys, table = _sum_by_key(keys, table)
        while keys.numel() > self.max_bins:
            self.precision_bits -= 1
            keys, table = _sum_by_key(keys >> 1, table, presorted=True)  # a shift keeps the order
        self.keys, self.table = keys, table

    def counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positives, negatives)``: CPU int64 ``(K,)`` counts per bin, highest bin first."""
        self._merge()
        table = self.table.cpu().flip(0)
        return table[:, 1].contiguous(), table[:, 0].contiguous()

    def compute(self) -> dict:
        """``{"AUPR", "AUROC", "FPR95"}`` ×100 with one threshold per bin; NaN without positives or negatives."""
        values = curve_metrics_from_counts(*self.counts())
        return {key: 100.0 * value for key, value in values.items()}


class _StreamingImageMetrics:
    """Pooled (count table) or per-image (exact, running mean) image-stream metrics.

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
        max_bins: int = DEFAULT_MAX_BINS,
        device: torch.device | str | None = None,
    ) -> None:
        self.reduction = check_reduction(self.default_reduction if reduction is None else reduction)
        self.curve = StreamingBinaryCurve(max_bins, device)
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
        """The metrics (×100) of every image added so far, with ``reduction``, ``num_images_used`` and, pooled, the
        ``precision_bits`` of the ranking (23 = exact)."""
        if self.reduction == "pooled":
            values = self.from_counts(*self.curve.counts())
            # 23: the exact ranking of the float32 scores; fewer: rounded to fit max_bins (StreamingBinaryCurve)
            return {**values, "reduction": "pooled", "num_images_used": self.num_pooled_images,
                    "precision_bits": self.curve.precision_bits}
        values, used = self.per_image.compute(), self.per_image.num_images_used
        return {**values, "reduction": self.reduction, "num_images_used": used}


class StreamingPixelFailureMetrics(_StreamingImageMetrics):
    """Streaming :func:`~synthcp3d.metrics.pixel.pixel_failure_metrics`: AUPR_Error, AUPR_Success, AUROC, FPR95.

    Args:
        reduction: ``"pooled"`` (default: one ranking of all pixels) or ``"per_image"`` (exact per image, then
            the mean over images holding both error and correct pixels).
        max_bins: distinct score bins the ``"pooled"`` table keeps (see :class:`StreamingBinaryCurve`).
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
        max_bins: distinct score bins the ``"pooled"`` table keeps (see :class:`StreamingBinaryCurve`).
        device: where the work runs; ``None`` = the device of the first scores.

    :meth:`update` takes one image ``(anomaly_score, is_anomaly, ignore=None)``.
    """

    keys = ANOMALY_KEYS
    names = ("anomaly_score", "is_anomaly")
    default_reduction = "per_image"
    from_counts = staticmethod(anomaly_metrics_from_counts)
