"""Ensembles of image-level quality predictions (Table 2's best row: mean of SynthCP and the VAE alarm)."""

from __future__ import annotations

import torch

from synthcp3d.errors import SynthCPInputError

__all__ = ["mean_ensemble"]


def mean_ensemble(*predicted_quality: torch.Tensor) -> torch.Tensor:
    """NaN-aware mean of several ``(N, C)`` quality predictions.

    A method that makes no prediction for an entry (NaN, e.g. the VAE alarm outside its class of interest) is left
    out of that entry's mean; an entry no method predicts stays NaN.
    """
    if not predicted_quality:
        raise SynthCPInputError("mean_ensemble needs at least one quality prediction")
    shapes = {tuple(q.shape) for q in predicted_quality}
    if len(shapes) != 1:
        raise SynthCPInputError(f"quality predictions differ in shape: {sorted(shapes)}")
    return torch.nanmean(torch.stack([q.float() for q in predicted_quality]), dim=0)
