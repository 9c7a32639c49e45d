"""Exact (sort-based) binary ranking metrics: AUPR (average precision), AUROC and FPR at 95% TPR.

Every metric is computed from one table: for each distinct score value, highest first, how many positives and
negatives carry that score (:func:`threshold_counts`). One threshold per distinct score value, as scikit-learn's
``roc_curve(drop_intermediate=False)`` and ``precision_recall_curve`` place them, so tied scores are flagged or
not flagged together. From the table (:func:`curve_metrics_from_counts`):

- AUPR = average precision, ``sum_k (R_k - R_{k-1}) P_k`` (scikit-learn's ``average_precision_score``, no
  interpolation);
- AUROC = trapezoidal area under (FPR, TPR) from (0, 0) (scikit-learn's ``roc_auc_score``);
- FPR95 = the smallest FPR among the thresholds whose TPR >= 0.95, over every distinct-score threshold
  (``roc_curve``'s default ``drop_intermediate=True`` drops collinear points and can skip the one that first
  reaches 0.95). Note: the Hendrycks-style code of some releases takes the threshold whose recall is *nearest*
  0.95; we take the first one that reaches it.

Degenerate cases, one answer each:

- no positive, or no negative (after ignoring pixels), or nothing at all: AUPR, AUROC and FPR95 are NaN
  (undefined; scikit-learn warns or raises there instead);
- constant score (one threshold): AUROC = 0.5, AUPR = prevalence, FPR95 = 1 (i.e. 100 when reported ×100);
- ties: one threshold per distinct value, exactly as scikit-learn.

Values here are fractions in [0, 1]; the public functions of :mod:`synthcp3d.metrics` report them ×100.

The table is hand-built (one ``np.sort`` of the scores and one of the positives' scores, then
``searchsorted``) rather than calling scikit-learn because scikit-learn runs a stable int64 argsort per metric
(AP, AUROC and the ROC points: about 6x slower on 10^7 pixels here) and raises or warns on the degenerate cases
instead of returning NaN. The streaming count tables (:mod:`synthcp3d.metrics.streaming`) feed the same
:func:`curve_metrics_from_counts`, so exact and binned results differ only through the binning.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "RECALL_LEVEL",
    "threshold_counts",
    "threshold_counts_torch",
    "curve_metrics_from_counts",
    "nan_curve_metrics",
]

RECALL_LEVEL = 0.95
"""The TPR (recall) level of FPR95."""


def nan_curve_metrics() -> dict[str, float]:
    """The answer for undefined inputs (no positive or no negative): every metric NaN."""
    return {"AUPR": math.nan, "AUROC": math.nan, "FPR95": math.nan}


def threshold_counts(score: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per distinct score value, highest score first (NumPy, CPU).

    Args:
        score: ``(P,)`` float scores, no NaN.
        target: ``(P,)`` bool, True = positive.

    Returns:
        ``(positives, negatives)``, two int64 arrays ``(K,)`` for the ``K`` distinct scores in decreasing order
        (reversed views).
    """
    if score.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # Temporaries are deleted as soon as possible: on 10^8 pixels each one is 0.4-0.8 GB.
    ordered = np.sort(score)
    positive_scores = np.sort(score[target])
    last = np.flatnonzero(ordered[1:] != ordered[:-1])  # last index of each run of equal values but the final one
    values = np.append(ordered[last], ordered[-1])
    size = ordered.size
    del ordered
    positive_up_to = np.searchsorted(positive_scores, values, side="right").astype(np.int64, copy=False)
    del positive_scores, values
    total_up_to = np.append(last + 1, size)
    del last
    negatives = np.diff(total_up_to, prepend=0)
    del total_up_to
    positives = np.diff(positive_up_to, prepend=0)
    del positive_up_to
    negatives -= positives
    return positives[::-1], negatives[::-1]


def threshold_counts_torch(score: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`threshold_counts` in torch, on the inputs' device (used by the per-image streaming path on GPU).

    Args:
        score: ``(P,)`` float scores, no NaN.
        target: ``(P,)`` bool, True = positive.

    Returns:
        ``(positives, negatives)``, int64 tensors ``(K,)`` on the same device, highest score first.
    """
    if score.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=score.device)
        return empty, empty
    ordered = torch.sort(score).values
    positive_scores = torch.sort(score[target]).values
    last = torch.nonzero(ordered[1:] != ordered[:-1]).squeeze(1)
    values = torch.cat([ordered[last], ordered[-1:]])
    total_up_to = torch.cat([last + 1, torch.tensor([ordered.numel()], device=score.device)])
    positive_up_to = torch.searchsorted(positive_scores, values, right=True)
    zero = torch.zeros(1, dtype=torch.int64, device=score.device)
    positives = torch.diff(positive_up_to, prepend=zero)
    negatives = torch.diff(total_up_to, prepend=zero) - positives
    return positives.flip(0), negatives.flip(0)


def _as_counts(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(counts, torch.Tensor):
        return counts
    # torch cannot view a reversed (negative-stride) array; copy only then.
    return torch.from_numpy(counts if all(stride >= 0 for stride in counts.strides) else counts.copy())


def curve_metrics_from_counts(
    positives: np.ndarray | torch.Tensor, negatives: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """AUPR, AUROC and FPR95 (fractions) from per-threshold counts, highest threshold first.

    Args:
        positives: ``(K,)`` integer count of positives whose score falls at threshold ``k`` (distinct value or
            table bin), ordered from the highest threshold to the lowest. Zero rows (empty bins) are allowed.
        negatives: ``(K,)`` likewise for negatives.

    Returns:
        ``{"AUPR", "AUROC", "FPR95"}`` as floats in [0, 1], all NaN when there is no positive or no negative.
    """
    positives, negatives = _as_counts(positives), _as_counts(negatives).to(positives.device)
    num_positive = int(positives.sum())
    num_negative = int(negatives.sum())
    if num_positive == 0 or num_negative == 0:
        return nan_curve_metrics()
    occupied = (positives + negatives) > 0  # an empty bin adds no point; dropping it avoids 0/0 precision
    true_pos = torch.cumsum(positives[occupied], 0).double()
    false_pos = torch.cumsum(negatives[occupied], 0).double()
    precision = true_pos / (true_pos + false_pos)
    tpr = true_pos / num_positive
    fpr = false_pos / num_negative
    zero = torch.zeros(1, dtype=torch.float64, device=tpr.device)
    aupr = torch.sum(torch.diff(tpr, prepend=zero) * precision)
    previous_tpr = torch.cat([zero, tpr[:-1]])
    auroc = torch.sum(torch.diff(fpr, prepend=zero) * (tpr + previous_tpr)) / 2.0
    # tpr is non-decreasing and ends at 1: the first index reaching the level has the smallest FPR among them.
    first = torch.searchsorted(tpr, torch.tensor([RECALL_LEVEL], dtype=torch.float64, device=tpr.device))
    fpr95 = fpr[first]
    return {"AUPR": float(aupr), "AUROC": float(auroc), "FPR95": float(fpr95)}
