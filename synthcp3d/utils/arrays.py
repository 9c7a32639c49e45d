"""Tensors and arrays at the NumPy boundary: the one place that knows what ``Tensor.numpy()`` refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a tensor (any device, with or without grad) or anything ``np.asarray`` takes.

    ``Tensor.numpy()`` fails on CUDA tensors, on tensors that require grad and on bfloat16 (NumPy has no such
    type, and bf16 is what autocast produces): those are detached, moved to the CPU and bf16 widened to float32.
    Not ``monai.utils.convert_to_numpy``: it fails on bf16 tensors and turns a list into a list of arrays.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()
    return np.asarray(x)
