"""Mixed precision: the one autocast rule of training and inference."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast"]


def autocast(
    device: torch.device, enabled: bool, dtype: torch.dtype = torch.bfloat16
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``enabled`` (a no-op context on CPU or when disabled); bf16 needs no grad scaler."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
