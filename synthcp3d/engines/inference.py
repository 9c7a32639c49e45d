"""Sliding-window inference for whole CT volumes in bounded memory: segmenter, generator, comparator error map.

Thin wrappers over ``monai.inferers.SlidingWindowInferer``: each network only ever sees ``roi_size`` patches
(``sw_device``, e.g. the GPU), while the stitched output accumulates on ``device`` (e.g. the CPU for a large
volume). Multi-input networks (the comparator) get their inputs concatenated along channels so that every input is
cut into the same windows, and split again inside the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.inferers import SlidingWindowInferer

from synthcp3d.engines.workflow import autocast
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.synthesizer import one_hot_labels

__all__ = ["make_inferer", "sliding_window_segment", "sliding_window_synthesize", "sliding_window_error_map"]


def make_inferer(
    roi_size: Sequence[int] | int,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> SlidingWindowInferer:
    """``SlidingWindowInferer`` with our defaults (gaussian blending, 25% overlap)."""
    return SlidingWindowInferer(
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        sw_device=sw_device,
        device=device,
        progress=progress,
    )


def _check(x: torch.Tensor, roi_size: Sequence[int] | int, name: str) -> None:
    if isinstance(roi_size, int):
        return
    dims = len(roi_size)
    if x.ndim != dims + 2:
        raise SynthCPInputError(
            f"{name} must be (B, C, *S) with {dims} spatial dims like roi_size, got {tuple(x.shape)}"
        )


@torch.no_grad()
def sliding_window_segment(
    image: torch.Tensor,
    network: nn.Module,
    roi_size: Sequence[int] | int,
    amp: bool = False,
    **inferer_kwargs,
) -> torch.Tensor:
    """Segmenter logits ``(B, C, *S)`` of ``image`` ``(B, Ci, *S)`` by sliding windows (``network`` in eval mode).

    ``inferer_kwargs`` go to `make_inferer` (``sw_batch_size``, ``overlap``, ``mode``, ``sw_device``, ``device``).
    """
    _check(image, roi_size, "image")
    inferer = make_inferer(roi_size, **inferer_kwargs)
    network.eval()
    sw_device = torch.device(inferer_kwargs.get("sw_device") or image.device)
    with autocast(sw_device, amp):
        return inferer(image, network).float()


@torch.no_grad()
def sliding_window_synthesize(
    label: torch.Tensor,
    generator: nn.Module,
    roi_size: Sequence[int] | int,
    num_classes: int,
    ignore_index: int | None = None,
    amp: bool = False,
    **inferer_kwargs,
) -> torch.Tensor:
    """Synthesized image ``G(onehot(label))`` ``(B, Co, *S)`` from a label map ``(B, 1, *S)`` by sliding windows.

    The one-hot encoding happens per window, so a many-class volume never exists one-hot in full. ``roi_size`` must
    be divisible by ``2 ** generator.num_upsamples``. Padding outside the volume is class 0 (cropped away).
    """
    _check(label, roi_size, "label")
    if label.shape[1] != 1:
        raise SynthCPInputError(f"label must be a label map (B, 1, *S), got {tuple(label.shape)}")
    inferer = make_inferer(roi_size, **inferer_kwargs)
    generator.eval()
    sw_device = torch.device(inferer_kwargs.get("sw_device") or label.device)

    def window(patch: torch.Tensor) -> torch.Tensor:
        return generator(one_hot_labels(patch, num_classes, ignore_index))

    with autocast(sw_device, amp):
        return inferer(label.float(), window).float()


@torch.no_grad()
def sliding_window_error_map(
    image: torch.Tensor,
    segmentation: torch.Tensor,
    comparator: nn.Module,
    roi_size: Sequence[int] | int,
    synthesis: torch.Tensor | None = None,
    amp: bool = False,
    **inferer_kwargs,
) -> torch.Tensor:
    """Comparator error probability ``sigmoid(error_logits)`` ``(B, 1, *S)`` by sliding windows.

    Args:
        image: ``(B, Ci, *S)``.
        segmentation: what the comparator takes as ``ŷ``: label map ``(B, 1, *S)``, one-hot or softmax
            ``(B, C, *S)`` (a label map is padded with class 0 at the borders).
        comparator: network whose output dict holds ``error_logits``.
        roi_size: window size (the comparator's encoder may need multiples of 32).
        synthesis: ``x̂`` ``(B, Ci, *S)`` (``None`` for Direct Prediction).
        amp: bf16 autocast on CUDA.
    """
    _check(image, roi_size, "image")
    if segmentation.ndim == image.ndim - 1:
        segmentation = segmentation.unsqueeze(1)
    tensors = [image.float(), segmentation.float()] + ([synthesis.float()] if synthesis is not None else [])
    if any(t.shape[0] != image.shape[0] or t.shape[2:] != image.shape[2:] for t in tensors):
        raise SynthCPInputError(
            f"image {tuple(image.shape)}, segmentation {tuple(segmentation.shape)} and synthesis "
            f"{None if synthesis is None else tuple(synthesis.shape)} must share batch and spatial sizes"
        )
    splits = [t.shape[1] for t in tensors]
    seg_is_labels = segmentation.shape[1] == 1
    inferer = make_inferer(roi_size, **inferer_kwargs)
    comparator.eval()
    sw_device = torch.device(inferer_kwargs.get("sw_device") or image.device)

    def window(patch: torch.Tensor) -> torch.Tensor:
        parts = list(torch.split(patch, splits, dim=1))
        if seg_is_labels:
            parts[1] = parts[1].round().long()  # a label map: the comparator one-hot encodes it
        synth = parts[2] if len(parts) == 3 else None
        return comparator(parts[0], parts[1], synth)["error_logits"]

    with autocast(sw_device, amp):
        logits = inferer(torch.cat(tensors, dim=1), window)
    return torch.sigmoid(logits.float())
