"""Single-pass uncertainty scores from the segmenter's output: MSP, entropy and max-logit.

All are dimension-generic over ``(B, C, *S)`` (any number of spatial dims, including none) and return
``(B, *S)`` with "higher = more likely wrong / anomalous":

- MSP (Hendrycks & Gimpel 2017): ``1 - max_c p_c``, in ``[0, 1 - 1/C]``;
- entropy: ``-sum_c p_c log p_c / log C`` (``0 log 0 = 0``), normalised by its maximum ``log C`` so that it lies
  in [0, 1] whatever the number of classes (1 = uniform prediction);
- max-logit (Hendrycks et al. 2019): ``-max_c logit_c``, unbounded.
"""

from __future__ import annotations

import math

import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, register_scorer

__all__ = ["msp_score", "entropy_score", "max_logit_score"]


def msp_score(probs: torch.Tensor) -> torch.Tensor:
    """``1 - max softmax``: ``probs (B, C, *S)`` -> ``(B, *S)`` in ``[0, 1 - 1/C]``."""
    check_class_tensor(probs, "probs")
    return 1.0 - probs.amax(dim=1)


def entropy_score(probs: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Shannon entropy over the class dim: ``probs (B, C, *S)`` -> ``(B, *S)``.

    Args:
        probs: class probabilities summing to 1 over dim 1 (``C >= 2``).
        normalize: divide by ``log C`` so the result lies in [0, 1] (default); otherwise nats in ``[0, log C]``.
    """
    check_class_tensor(probs, "probs")
    num_classes = probs.shape[1]
    if num_classes < 2:
        raise SynthCPInputError(f"entropy needs at least 2 classes, got probs of shape {tuple(probs.shape)}")
    probs = probs.float()
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    return entropy / math.log(num_classes) if normalize else entropy


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """``-max logit``: ``logits (B, C, *S)`` -> ``(B, *S)`` (unbounded)."""
    check_class_tensor(logits, "logits")
    return -logits.amax(dim=1)


@register_scorer("msp", inputs=("probs",), description="1 - maximum softmax probability")
def _msp(probs: torch.Tensor) -> ScoreOutput:
    score = msp_score(probs)
    return ScoreOutput(pixel_error=score, anomaly=score)


@register_scorer("entropy", inputs=("probs",), description="softmax entropy / log C")
def _entropy(probs: torch.Tensor) -> ScoreOutput:
    score = entropy_score(probs)
    return ScoreOutput(pixel_error=score, anomaly=score)


@register_scorer("max_logit", inputs=("logits",), description="negative maximum logit")
def _max_logit(logits: torch.Tensor) -> ScoreOutput:
    score = max_logit_score(logits)
    return ScoreOutput(pixel_error=score, anomaly=score)
