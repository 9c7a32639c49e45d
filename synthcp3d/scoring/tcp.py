"""TCP / ConfidNet (Corbière et al., NeurIPS 2019): regress the true-class probability, score ``1 - TCP``.

- target: ``TCP(i) = p_{y_i}(i)``, the softmax probability of the ground-truth class (undefined = NaN on
  ignore-label pixels);
- loss: mean squared error between the ConfidNet head's sigmoid output and the target, over defined pixels; the
  head runs on segmenter features, possibly at lower resolution, so its output is upsampled to the label size;
- score: ``1 - predicted TCP`` (high = likely wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.anomaly import resize_spatial
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, inference_mode, register_scorer
from synthcp3d.targets import as_label_map

__all__ = ["true_class_probability", "tcp_loss", "tcp_error_score"]


def true_class_probability(probs: torch.Tensor, label: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Softmax probability of the ground-truth class.

    Args:
        probs: softmax ``(B, C, *S)``.
        label: class indices ``(B, *S)`` or ``(B, 1, *S)``.
        ignore_index: label value with no target (NaN in the output).

    Returns:
        ``(B, *S)`` float, NaN on ignored pixels.
    """
    check_class_tensor(probs, "probs")
    label = as_label_map(label)
    if label.shape != probs.shape[:1] + probs.shape[2:]:
        raise SynthCPInputError(f"label shape {tuple(label.shape)} does not match probs {tuple(probs.shape)}")
    ignored = label == ignore_index if ignore_index is not None else torch.zeros_like(label, dtype=torch.bool)
    if ((label < 0) | (label >= probs.shape[1]))[~ignored].any():
        raise SynthCPInputError(f"label holds values outside 0..{probs.shape[1] - 1} (ignore_index={ignore_index})")
    index = torch.where(ignored, torch.zeros_like(label), label).long()
    tcp = probs.float().gather(1, index[:, None])[:, 0]
    return tcp.masked_fill(ignored, float("nan"))


def _as_map(head_output: torch.Tensor, output_size: Sequence[int] | None) -> torch.Tensor:
    """``(B, 1, *S')`` head output -> ``(B, *S)`` (upsampled when ``output_size`` differs)."""
    if head_output.ndim < 3 or head_output.shape[1] != 1:
        raise SynthCPInputError(f"ConfidNet output must have shape (B, 1, *spatial), got {tuple(head_output.shape)}")
    if output_size is not None:
        head_output = resize_spatial(head_output, output_size)
    return head_output[:, 0]


def tcp_loss(head_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked MSE between predicted TCP ``(B, 1, *S')`` (upsampled to the target) and target ``(B, *S)``.

    NaN target pixels contribute nothing; with no defined pixel the loss is 0 (still differentiable).
    """
    prediction = _as_map(head_output, target.shape[1:])
    defined = torch.isfinite(target)
    squared = (prediction - torch.nan_to_num(target, nan=0.0)) ** 2
    return (squared * defined).sum() / defined.sum().clamp_min(1)


def tcp_error_score(head_output: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
    """``1 - TCP``: ``(B, 1, *S')`` sigmoid output -> ``(B, *S')`` or ``(B, *output_size)``."""
    return 1.0 - _as_map(head_output, output_size)


@register_scorer(
    "tcp",
    inputs=("segmenter", "confidnet", "image"),
    description="1 - true-class probability regressed by a ConfidNet head on segmenter features",
)
def _tcp(segmenter: nn.Module, confidnet: nn.Module, image: torch.Tensor) -> ScoreOutput:
    with inference_mode(segmenter, confidnet):
        _, features = segmenter.forward_features(image)
        score = tcp_error_score(confidnet(features), output_size=image.shape[2:])
    return ScoreOutput(pixel_error=score)
