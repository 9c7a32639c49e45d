"""Sliding-window inference for whole CT volumes in bounded memory (the pancreas study's segmentation, the GPU check).

Thin wrappers over ``monai.inferers.SlidingWindowInferer``: the network only ever sees ``roi_size`` patches
(``sw_device``, e.g. the GPU), while the stitched output accumulates on ``device`` (e.g. the CPU for a large
volume).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.inferers import SlidingWindowInferer

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.amp import autocast

__all__ = ["make_inferer", "sliding_window_segment"]


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
