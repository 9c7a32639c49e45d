"""Boundary checks for pixel-metric inputs: per-image score / binary target / ignore mask -> valid pixels.

Shared by the exact functions and the streaming accumulators so that both accept the same inputs and reject
bad ones with the same :class:`~synthcp3d.errors.SynthCPInputError` message.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

from synthcp3d.errors import SynthCPInputError

__all__ = ["ArrayLike", "ImagesLike", "as_tensor", "split_images", "valid_pixels", "check_reduction"]

ArrayLike = Union[np.ndarray, torch.Tensor]
ImagesLike = Union[ArrayLike, Sequence[ArrayLike]]

REDUCTIONS = ("pooled", "per_image")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is ``"pooled"`` or ``"per_image"``, else raise."""
    if reduction not in REDUCTIONS:
        raise SynthCPInputError(f"reduction must be 'pooled' or 'per_image', got {reduction!r}")
    return reduction


def as_tensor(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """NumPy array, tensor or nested list -> tensor (zero-copy for CPU NumPy arrays), optionally moved to ``device``."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach()
    else:
        try:
            array = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise SynthCPInputError(f"{name} could not be read as an array: {exc}") from exc
        if array.dtype == object:
            raise SynthCPInputError(f"{name} is not a numeric array (ragged or object dtype)")
        array = np.ascontiguousarray(array)
        if not array.dtype.isnative:  # e.g. big-endian NIfTI data: torch.from_numpy refuses a foreign byte order
            array = array.astype(array.dtype.newbyteorder("="))
        if array.dtype == np.float16:
            array = array.astype(np.float32)
        with warnings.catch_warnings():
            # A read-only array (e.g. a memory map) is shared, not copied: nothing here writes to it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def split_images(images: ImagesLike, name: str) -> list[Any]:
    """An array ``(N, *spatial)`` or a sequence of per-image arrays (shapes may differ) -> list of ``N`` images."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim < 2:
            raise SynthCPInputError(
                f"{name} must be an array (N, *spatial) with at least 2 dimensions or a sequence of per-image "
                f"arrays; got shape {tuple(images.shape)}"
            )
        return list(images)
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        return list(images)
    raise SynthCPInputError(f"{name} must be an array (N, *spatial) or a sequence of per-image arrays")


def _as_score(score: torch.Tensor) -> torch.Tensor:
    if score.dtype in (torch.float16, torch.bfloat16):
        return score.float()
    if not score.is_floating_point():
        return score.double()
    return score


def _as_binary(values: torch.Tensor, valid: torch.Tensor | None, name: str, where: str) -> torch.Tensor:
    if values.dtype == torch.bool:
        return values
    checked = values if valid is None else values[valid]
    if bool(((checked != 0) & (checked != 1)).any()):
        bad = checked[(checked != 0) & (checked != 1)][0].item()
        raise SynthCPInputError(
            f"{name}{where} must be binary (bool or 0/1) at non-ignored pixels but holds {bad!r}; pass the "
            f"ignore-label pixels as ignore=(map == ignore_value)"
        )
    return values == 1


def valid_pixels(
    score: Any,
    target: Any,
    ignore: Any = None,
    names: tuple[str, str] = ("score", "target"),
    where: str = "",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one image and return its non-ignored pixels, flattened.

    Args:
        score: ``(*spatial)`` scores, higher = more likely positive. NaN is allowed only at ignored pixels.
        target: ``(*spatial)`` bool or 0/1, True = positive.
        ignore: optional ``(*spatial)`` bool (or 0/1) mask of pixels to exclude.
        names: how to call ``score`` and ``target`` in error messages.
        where: text locating the image in error messages, e.g. ``" (image 3)"``.
        device: where the returned tensors live (default: the score's device).

    Returns:
        ``(score (P,), target (P,) bool)``; ``score`` keeps float32/float64 (half -> float32, integers -> float64).
    """
    score_t = _as_score(as_tensor(score, names[0] + where, device))
    target_t = as_tensor(target, names[1] + where, score_t.device)
    if tuple(score_t.shape) != tuple(target_t.shape):
        raise SynthCPInputError(
            f"{names[0]}{where} has shape {tuple(score_t.shape)} but {names[1]} has shape {tuple(target_t.shape)}"
        )
    valid = None
    if ignore is not None:
        ignore_t = as_tensor(ignore, "ignore" + where, score_t.device)
        if tuple(ignore_t.shape) != tuple(score_t.shape):
            raise SynthCPInputError(
                f"ignore{where} has shape {tuple(ignore_t.shape)} but {names[0]} has shape {tuple(score_t.shape)}"
            )
        valid = ignore_t == 0
    target_b = _as_binary(target_t, valid, names[1], where)
    if valid is None:
        flat_score, flat_target = score_t.reshape(-1), target_b.reshape(-1)
    else:
        flat_score, flat_target = score_t[valid], target_b[valid]
    if flat_score.is_floating_point():
        nan_count = int(torch.isnan(flat_score).sum())
        if nan_count:
            raise SynthCPInputError(f"{names[0]}{where} holds NaN at {nan_count} non-ignored pixel(s)")
    return flat_score, flat_target
