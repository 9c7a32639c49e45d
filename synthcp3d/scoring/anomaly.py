"""SynthCP anomaly segmentation (paper sec. 3.3): feature cosine distance between ``x`` and ``x̂ = G(ŷ)``.

``ĉ_n(i) = 1 - cos(f_M(x)_i, f_M(x̂)_i)`` on the segmentation model's last-layer features (eq. 9), brought to the
input resolution (bilinear in 2D, trilinear in 3D), then post-processed with MSP:
``ĉ_n <- ĉ_n · 1{p <= t} + (1 - p) · 1{p > t}``, ``p`` = maximum softmax, ``t = 0.999`` by default. No training.

Ranges: the cosine distance lies in [0, 2] (0 = same direction, 2 = opposite; a zero feature vector against a
non-zero one counts as orthogonal, distance 1; two zero vectors as identical, distance 0), ``1 - p`` in
[0, 1 - 1/C]; the mix is only ranked, never thresholded, by the metrics.

Multi-scale testing (optional, ``scales``): both images are resized by each factor, scored, and the distance maps
and softmax maps are averaged at the input resolution before the post-processing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, inference_mode, register_scorer

__all__ = [
    "TABLE4_THRESHOLDS",
    "resize_spatial",
    "feature_cosine_distance",
    "msp_postprocess",
    "synthcp_anomaly_components",
    "synthcp_anomaly_score",
    "threshold_sweep",
]

#: The post-processing thresholds of the paper's Table 4.
TABLE4_THRESHOLDS: tuple[float, ...] = (0.8, 0.9, 0.99, 0.999, 1.0)


def resize_spatial(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``(B, C, *S)`` to ``(B, C, *size)``: linear / bilinear / trilinear (``align_corners=False``)."""
    size = tuple(int(s) for s in size)
    if tuple(tensor.shape[2:]) == size:
        return tensor
    if len(size) != tensor.ndim - 2 or not 1 <= len(size) <= 3:
        raise SynthCPInputError(f"cannot resize a tensor of shape {tuple(tensor.shape)} to spatial size {size}")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(tensor.float(), size=size, mode=mode, align_corners=False)


def feature_cosine_distance(
    feat_x: torch.Tensor, feat_synth: torch.Tensor, output_size: Sequence[int] | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``1 - cos`` over the channel dim of two feature maps.

    Args:
        feat_x: features of the real image ``(B, F, *S')``.
        feat_synth: features of the synthesized image, same shape.
        output_size: spatial size to upsample the distance map to (e.g. the image's ``*S``); ``None`` keeps ``S'``.
        eps: guards the norms (``torch.nn.functional.cosine_similarity``).

    Returns:
        ``(B, *S')`` or ``(B, *output_size)``, values in [0, 2] (two zero vectors: 0; one zero vector: 1).
    """
    check_class_tensor(feat_x, "feat_x", min_ndim=3)
    if feat_x.shape != feat_synth.shape:
        raise SynthCPInputError(
            f"feature maps differ in shape: {tuple(feat_x.shape)} (image) vs {tuple(feat_synth.shape)} (synthesis)"
        )
    feat_x, feat_synth = feat_x.float(), feat_synth.float()
    distance = 1.0 - F.cosine_similarity(feat_x, feat_synth, dim=1, eps=eps)
    both_zero = (feat_x.norm(dim=1) <= eps) & (feat_synth.norm(dim=1) <= eps)
    distance = distance.masked_fill(both_zero, 0.0)  # two zero vectors (e.g. after a ReLU) are identical
    if output_size is not None:
        distance = resize_spatial(distance[:, None], output_size)[:, 0]
    return distance.clamp(0.0, 2.0)


def msp_postprocess(score: torch.Tensor, probs: torch.Tensor, t: float = 0.999) -> torch.Tensor:
    """``score · 1{p <= t} + (1 - p) · 1{p > t}`` with ``p`` the maximum softmax.

    Args:
        score: anomaly score ``(B, *S)``.
        probs: softmax ``(B, C, *S)``.
        t: threshold in [0, 1]; ``t = 1`` keeps ``score`` everywhere. ``p == t`` keeps ``score``.
    """
    check_class_tensor(probs, "probs")
    if not 0.0 <= t <= 1.0:
        raise SynthCPInputError(f"the MSP threshold t must lie in [0, 1], got {t}")
    p = probs.amax(dim=1)
    if p.shape != score.shape:
        raise SynthCPInputError(f"score shape {tuple(score.shape)} does not match probs {tuple(probs.shape)}")
    return torch.where(p > t, 1.0 - p, score)


def _forward_features(segmenter: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(segmenter, "forward_features"):
        raise SynthCPInputError(f"{type(segmenter).__name__} has no forward_features(x) -> (logits, features)")
    logits, features = segmenter.forward_features(x)
    return logits, features


def synthcp_anomaly_components(
    segmenter: nn.Module, x: torch.Tensor, x_synth: torch.Tensor, scales: Sequence[float] = (1.0,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the segmenter on both images: the cosine distance map and the real image's softmax.

    Args:
        segmenter: ``forward_features(x) -> (logits (B, C, *S), features (B, F, *S'))``; run in eval mode.
        x: image ``(B, Cin, *S)``.
        x_synth: synthesized image ``G(ŷ)``, same shape.
        scales: resize factors for multi-scale testing (averaged); ``(1.0,)`` = single scale.

    Returns:
        ``distance (B, *S)`` in [0, 2] and ``probs (B, C, *S)``.
    """
    check_class_tensor(x, "image", min_ndim=3)
    if x.shape != x_synth.shape:
        raise SynthCPInputError(f"image shape {tuple(x.shape)} differs from synthesis shape {tuple(x_synth.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise SynthCPInputError(f"scales must be positive factors, got {tuple(scales)}")
    size = tuple(x.shape[2:])
    distance_sum: torch.Tensor | None = None
    probs_sum: torch.Tensor | None = None
    with inference_mode(segmenter):
        for scale in scales:
            scaled_size = [max(1, round(s * scale)) for s in size]
            xs, ss = resize_spatial(x, scaled_size), resize_spatial(x_synth, scaled_size)
            logits, feat_x = _forward_features(segmenter, xs)
            _, feat_s = _forward_features(segmenter, ss)
            distance = feature_cosine_distance(feat_x, feat_s, output_size=size)
            probs = torch.softmax(resize_spatial(logits.float(), size), dim=1)
            distance_sum = distance if distance_sum is None else distance_sum + distance
            probs_sum = probs if probs_sum is None else probs_sum + probs
    assert distance_sum is not None and probs_sum is not None
    return distance_sum / len(scales), probs_sum / len(scales)


def synthcp_anomaly_score(
    segmenter: nn.Module,
    x: torch.Tensor,
    x_synth: torch.Tensor,
    t: float = 0.999,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """SynthCP anomaly map ``(B, *S)``: feature cosine distance with MSP post-processing at threshold ``t``."""
    distance, probs = synthcp_anomaly_components(segmenter, x, x_synth, scales)
    return msp_postprocess(distance, probs, t)


def threshold_sweep(
    segmenter: nn.Module,
    x: torch.Tensor,
    x_synth: torch.Tensor,
    thresholds: Sequence[float] = TABLE4_THRESHOLDS,
    scales: Sequence[float] = (1.0,),
) -> dict[float, torch.Tensor]:
    """Anomaly maps ``(B, *S)`` for several thresholds ``t`` from one segmenter pass (paper Table 4)."""
    distance, probs = synthcp_anomaly_components(segmenter, x, x_synth, scales)
    return {float(t): msp_postprocess(distance, probs, t) for t in thresholds}


@register_scorer(
    "synthcp_anomaly",
    inputs=("segmenter", "image", "synthesis"),
    description="feature cosine distance between image and synthesis, MSP post-processed (t=0.999)",
)
def _synthcp_anomaly(
    segmenter: nn.Module,
    image: torch.Tensor,
    synthesis: torch.Tensor,
    t: float = 0.999,
    scales: Sequence[float] = (1.0,),
) -> ScoreOutput:
    return ScoreOutput(anomaly=synthcp_anomaly_score(segmenter, image, synthesis, t=t, scales=scales))
