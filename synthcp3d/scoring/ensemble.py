"""Ensembles for image-level quality: the mean of several predictions (Table 2's best row: SynthCP + VAE alarm),
and the agreement between an ensemble's segmentations (the pairwise-Dice baseline).

Pairwise Dice: Zenk et al. (Medical Image Analysis 2025, "Comparative benchmarking of failure detection methods in
medical image segmentation") found the mean Dice between the predictions of an ensemble's members the strongest
per-case failure detector on all six of their data sets.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.targets import per_class_quality

__all__ = ["mean_ensemble", "pairwise_agreement"]


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


def pairwise_agreement(
    segmentations: Sequence[torch.Tensor], num_classes: int, metric: Literal["dice", "iou"] = "dice"
) -> torch.Tensor:
    """Mean per-class overlap over every pair of ensemble members' segmentations.

    Args:
        segmentations: ``K >= 2`` label maps ``(B, *spatial)`` of the same images.
        num_classes: ``C``.
        metric: ``"dice"`` (3D) or ``"iou"`` (2D), as :func:`synthcp3d.targets.per_class_quality`.

    Returns:
        ``(B, C)``: for each class, the mean over the pairs in which some member predicts it; NaN where no member
        does (the members agree that the class is absent: no overlap to measure).
    """
    if len(segmentations) < 2:
        raise SynthCPInputError(f"pairwise agreement needs at least 2 segmentations, got {len(segmentations)}")
    pairs = [per_class_quality(a, b, num_classes, metric=metric) for a, b in itertools.combinations(segmentations, 2)]
    return torch.nanmean(torch.stack(pairs), dim=0)
