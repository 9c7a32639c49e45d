"""Failure detection with a comparator: SynthCP (image vs synthesis) and Direct Prediction (no synthesis).

The comparator (``synthcp3d.networks.SiameseComparator`` / ``build_comparator``) returns
``dict(quality=(B, C) in [0, 1], error_logits=(B, 1, *S))`` (only the heads it has); this turns that into a
:class:`ScoreOutput`: ``quality`` as is (already a sigmoid), ``pixel_error = sigmoid(error_logits)`` ``(B, *S)``.
"""

from __future__ import annotations

import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, inference_mode, register_scorer

__all__ = ["comparator_scores"]


def comparator_scores(
    comparator: nn.Module,
    image: torch.Tensor,
    segmentation_onehot: torch.Tensor,
    synthesis: torch.Tensor | None = None,
) -> ScoreOutput:
    """Run the comparator (eval mode, no grad).

    Args:
        comparator: ``forward(image, segmentation, synthesis=None) -> dict``.
        image: ``(B, Cin, *S)``.
        segmentation_onehot: predicted segmentation ``(B, C, *S)`` (one-hot, or softmax for ``seg_input="softmax"``).
        synthesis: ``G(ŷ)`` ``(B, Cin, *S)`` for SynthCP; ``None`` for Direct Prediction.

    Returns:
        ``ScoreOutput(quality=(B, C), pixel_error=(B, *S), features=(B, F))`` with the fields the comparator's heads
        provide (``features``: the pooled features its quality head read).
    """
    if image.shape[0] != segmentation_onehot.shape[0] or image.shape[2:] != segmentation_onehot.shape[2:]:
        raise SynthCPInputError(
            f"image shape {tuple(image.shape)} and segmentation shape {tuple(segmentation_onehot.shape)} differ "
            "in batch or spatial size"
        )
    if synthesis is not None and synthesis.shape != image.shape:
        raise SynthCPInputError(f"synthesis shape {tuple(synthesis.shape)} differs from image {tuple(image.shape)}")
    with inference_mode(comparator):
        outputs = comparator(image, segmentation_onehot, synthesis)
    error_logits = outputs.get("error_logits")
    return ScoreOutput(
        quality=outputs.get("quality"),
        pixel_error=None if error_logits is None else torch.sigmoid(error_logits.float())[:, 0],
        features=outputs.get("pooled_features"),
    )


@register_scorer(
    "synthcp",
    inputs=("comparator", "image", "segmentation", "synthesis"),
    description="SynthCP comparator on (image, segmentation) vs (synthesis, segmentation)",
)
def _synthcp(
    comparator: nn.Module, image: torch.Tensor, segmentation: torch.Tensor, synthesis: torch.Tensor
) -> ScoreOutput:
    return comparator_scores(comparator, image, segmentation, synthesis)


@register_scorer(
    "direct",
    inputs=("direct_comparator", "image", "segmentation"),
    description="Direct Prediction: a comparator trained without the synthesized image",
)
def _direct(direct_comparator: nn.Module, image: torch.Tensor, segmentation: torch.Tensor) -> ScoreOutput:
    return comparator_scores(direct_comparator, image, segmentation, None)
