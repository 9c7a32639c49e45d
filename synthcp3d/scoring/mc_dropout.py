"""MC-Dropout (Gal & Ghahramani 2016): pixel uncertainty, and the image-level quality baseline "following Liu et al.".

- :func:`mc_dropout_probs`: ``samples`` stochastic forward passes with only the dropout layers active (batch norm
  stays in eval mode), returning the mean softmax and its predictive entropy ``H(mean p) / log C`` in [0, 1]
  (the pixel-level score).
- :class:`MCDropoutQualityRegressor`: per class, the mean entropy inside the predicted region of that class is
  mapped linearly to IoU / DSC (Liu et al., ICCV 2019, use MC-Dropout this way as an image-level baseline; the
  SynthCP paper follows them). A class the segmenter does not predict has no entropy feature; its predicted
  quality is 0.0, which is exact wherever the true quality is defined (empty prediction, non-empty label).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, inference_mode, register_scorer
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.scoring.softmax_scores import entropy_score
from synthcp3d.targets import as_label_map

__all__ = ["mc_dropout_probs", "mean_entropy_per_class", "MCDropoutQualityRegressor"]


def _logits_of(output: Any) -> torch.Tensor:
    # Segmenters return logits; tolerate (logits, features) tuples and {"logits": ...} dicts.
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif isinstance(output, dict):
        output = output["logits"]
    return output


def mc_dropout_probs(
    segmenter: nn.Module, x: torch.Tensor, samples: int = 50, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax over ``samples`` dropout draws, and its normalised predictive entropy.

    The segmenter's own train/eval flags are restored afterwards. No gradients are kept.

    Args:
        segmenter: ``forward(x) -> logits (B, C, *S)`` with dropout layers (see ``synthcp3d.networks``).
        x: input ``(B, Cin, *S)``.
        samples: number of stochastic passes (50 in the SynthCP paper's baseline).
        progress: show a progress bar over the passes (off by default: evaluators show their own).

    Returns:
        ``mean_probs (B, C, *S)`` and ``entropy_map (B, *S)`` in [0, 1].
    """
    from synthcp3d.networks import enable_mc_dropout

    if samples < 1:
        raise SynthCPInputError(f"samples must be at least 1, got {samples}")
    total: torch.Tensor | None = None
    with inference_mode(segmenter):
        enable_mc_dropout(segmenter)
        for _ in tqdm(range(samples), desc="MC-Dropout", disable=not progress, leave=False):
            probs = torch.softmax(_logits_of(segmenter(x)).float(), dim=1)
            total = probs if total is None else total.add_(probs)
    assert total is not None
    mean_probs = total / samples
    return mean_probs, entropy_score(mean_probs)


def mean_entropy_per_class(entropy_map: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of ``entropy_map`` over the pixels predicted as each class.

    Args:
        entropy_map: ``(B, *S)``.
        prediction: predicted class indices ``(B, *S)`` or ``(B, 1, *S)``, or one-hot / probabilities
            ``(B, C, *S)`` (argmax taken).
        num_classes: ``C``.

    Returns:
        ``(B, C)``; NaN for a class with no predicted pixel.
    """
    if prediction.ndim == entropy_map.ndim + 1 and prediction.shape[1] == num_classes and num_classes > 1:
        prediction = prediction.argmax(dim=1)
    prediction = as_label_map(prediction)
    if prediction.shape != entropy_map.shape:
        raise SynthCPInputError(
            f"prediction shape {tuple(prediction.shape)} differs from entropy map shape {tuple(entropy_map.shape)}"
        )
    batch = entropy_map.shape[0]
    labels = prediction.reshape(batch, -1)
    valid = ((labels >= 0) & (labels < num_classes)).float()
    labels = labels.clamp(0, num_classes - 1)
    # scatter-add keeps memory at O(B * pixels), unlike a (B, pixels, C) one-hot.
    zeros = torch.zeros(batch, num_classes, device=entropy_map.device)
    sums = zeros.scatter_add(1, labels, entropy_map.reshape(batch, -1).float() * valid)
    counts = zeros.scatter_add(1, labels, valid)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


class MCDropoutQualityRegressor(LinearQualityRegressor):
    """Per-class linear regression from mean MC-Dropout entropy in the predicted region to IoU / DSC.

    ``fit(features (N, C), true_quality (N, C) with NaN = undefined)``; ``predict(features) -> (N, C)`` in [0, 1];
    a NaN feature (class not predicted) predicts 0.0. Features come from :func:`mean_entropy_per_class`.
    """

    kind = "mc_dropout_quality"
    feature = "mean normalised predictive entropy inside the predicted class region"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, missing_feature_quality=0.0)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {**super().state_dict(), "feature": self.feature}


@register_scorer(
    "mc_dropout",
    inputs=("segmenter", "image"),
    optional=("mc_regressor",),
    description="MC-Dropout predictive entropy (+ per-class quality when a fitted regressor is given)",
)
def _mc_dropout(
    segmenter: nn.Module, image: torch.Tensor, mc_regressor: MCDropoutQualityRegressor | None = None, samples: int = 50
) -> ScoreOutput:
    mean_probs, entropy = mc_dropout_probs(segmenter, image, samples=samples)
    quality = None
    if mc_regressor is not None:
        features = mean_entropy_per_class(entropy, mean_probs.argmax(dim=1), mean_probs.shape[1])
        quality = mc_regressor.predict(features)
    return ScoreOutput(pixel_error=entropy, anomaly=entropy, quality=quality)
