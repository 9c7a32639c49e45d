"""Ground-truth targets of the comparator, computed from a label map ``y`` and a prediction ``ŷ``.

- per-class quality (paper eq. 6): IoU in 2D, Dice (DSC) in 3D, NaN where the class is absent from both;
- pixel error map (paper eq. 7): ``1{y != ŷ}``.

An ignore label (e.g. Cityscapes' 255) is excluded throughout: its pixels count for no class and carry the
ignore value in the error map. Everything is batched and runs on whichever device the inputs are on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from synthcp3d.errors import SynthCPInputError

__all__ = ["per_class_quality", "error_map", "as_label_map", "not_predicted_is_zero"]


def as_label_map(labels: torch.Tensor) -> torch.Tensor:
    """Return an integer label map ``(B, *spatial)``; a singleton channel ``(B, 1, *spatial)`` is squeezed."""
    if labels.ndim >= 3 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise SynthCPInputError("label map holds non-integer values; expected class indices")
        labels = labels.long()
    return labels


def per_class_quality(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    metric: Literal["iou", "dice"] = "dice",
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Per-image, per-class overlap between prediction and ground truth.

    Args:
        pred: predicted class indices ``(B, *spatial)`` or ``(B, 1, *spatial)``.
        label: ground-truth class indices, same shape.
        num_classes: number of classes ``C`` (indices ``0..C-1``; the background counts as a class).
        metric: ``"iou"`` = |P∩Y| / |P∪Y| (2D studies), ``"dice"`` = 2|P∩Y| / (|P|+|Y|) (3D).
        ignore_index: label value excluded from every count (its pixels are dropped whatever ``pred`` says).

    Returns:
        ``(B, C)`` float tensor in [0, 1]; NaN where the class is absent from both ``label`` and ``pred``.
    """
    pred, label = as_label_map(pred), as_label_map(label)
    if pred.shape != label.shape:
        raise SynthCPInputError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    if metric not in ("iou", "dice"):
        raise ValueError(f"metric must be 'iou' or 'dice', got {metric!r}")
    batch = pred.shape[0]
    pred, label = pred.reshape(batch, -1), label.reshape(batch, -1)
    valid = torch.ones_like(label, dtype=torch.bool) if ignore_index is None else label != ignore_index
    # Counting by scatter-add into (B, C) bins keeps memory at O(B*C) whatever the number of classes.
    offsets = torch.arange(batch, device=pred.device).unsqueeze(1) * num_classes

    def count(index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        in_range = mask & (index >= 0) & (index < num_classes)
        flat = (index + offsets)[in_range]
        return torch.bincount(flat, minlength=batch * num_classes).reshape(batch, num_classes).double()

    pred_count = count(pred, valid)
    label_count = count(label, valid)
    intersection = count(label, valid & (pred == label))
    if metric == "iou":
        denominator = pred_count + label_count - intersection
        quality = intersection / denominator
    else:
        denominator = pred_count + label_count
        quality = 2.0 * intersection / denominator
    quality = torch.where(denominator > 0, quality, torch.full_like(quality, float("nan")))
    return quality.float()


def error_map(pred: torch.Tensor, label: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Pixel error map ``1{label != pred}`` of shape ``(B, *spatial)`` (uint8).

    Pixels whose label is ``ignore_index`` get the value ``ignore_index`` (so pass ``ignore_index`` <= 255),
    which losses and metrics mask out.
    """
    pred, label = as_label_map(pred), as_label_map(label)
    if pred.shape != label.shape:
        raise SynthCPInputError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
    error = (pred != label).to(torch.uint8)
    if ignore_index is not None:
        if not 1 < ignore_index <= 255:
            raise ValueError("ignore_index must lie in 2..255 to stay distinct from the 0/1 error values")
        error[label == ignore_index] = ignore_index
    return error


def not_predicted_is_zero(quality: np.ndarray, pred: np.ndarray, keep: Sequence[int] = ()) -> np.ndarray:
    """Predicted quality ``(C,)`` with 0 for every class absent from the segmentation ``pred`` (any shape).

    Exact wherever the true quality is defined (a class in the ground truth but not in the prediction scores 0);
    applied to every method of a table alike, so no method gets the rule's free points alone. ``keep``: classes left
    as predicted (e.g. the background of a CT, always present).
    """
    quality = np.array(quality, dtype=np.float64, copy=True)
    present = np.bincount(np.asarray(pred).ravel().astype(np.int64), minlength=quality.shape[0])[: quality.shape[0]] > 0
    absent = ~present
    absent[list(keep)] = False
    quality[absent] = 0.0
    return quality
