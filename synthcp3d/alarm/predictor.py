"""The small interface between the DSC alarm's I/O shell and the trained networks.

A predictor takes one *preprocessed* volume (a ``MetaTensor`` ``(1, X, Y, Z)`` on the model's working grid, with its
affine) and returns a :class:`Prediction`: segmentation, synthesized image, error probability and predicted DSCs,
all on a working grid whose affine it states. Everything about files, orientation, spacing and writing lives in
:mod:`synthcp3d.alarm.api`; everything about networks lives in the predictor. The real one is
:class:`synthcp3d.alarm.bundle_predictor.BundlePredictor`; tests plug in stand-ins with known outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from synthcp3d.alarm.timing import StageTimer

__all__ = ["Prediction", "Predictor", "METHODS", "STAGES"]

#: Predicted-DSC sources, in report order. ``ensemble`` is the mean of SynthCP and the VAE alarm (the paper's Table 2
#: best row, and the flag's source); ``pairwise_dice`` the fold ensemble's mean pairwise Dice (Zenk et al. 2025; None
#: without fold models) and ``synthcp_pairwise`` its mean with SynthCP.
METHODS = ("synthcp", "vae_alarm", "ensemble", "pairwise_dice", "synthcp_pairwise")
#: Stages timed in every report, in order.
STAGES = ("load", "preprocess", "segment", "synthesize", "compare", "vae", "pairwise", "postprocess", "write")


@dataclass
class Prediction:
    """A predictor's output for one volume, on its working grid.

    Attributes:
        segmentation: class indices ``(X, Y, Z)`` (0 background, 1 pancreas, 2 tumour for the pancreas bundle).
        error_probability: probability that each voxel of ``segmentation`` is wrong, ``(X, Y, Z)`` in [0, 1].
        image: the network's input image ``(X, Y, Z)`` (for the overview picture).
        synthesized: the image synthesized from ``segmentation``, ``(X, Y, Z)``, or None.
        affine: 4x4 voxel-to-world (RAS mm) affine of these arrays.
        dsc: predicted DSC per method (:data:`METHODS`) and class name (``"pancreas"``, ``"tumour"``);
            None where a method does not predict that class.
        seconds: time per stage (``segment``, ``synthesize``, ``compare``, ``vae``) when the predictor times itself
            without the caller's :class:`~synthcp3d.alarm.timing.StageTimer`.
    """

    segmentation: np.ndarray
    error_probability: np.ndarray
    image: np.ndarray
    synthesized: np.ndarray | None
    affine: np.ndarray
    dsc: dict[str, dict[str, float | None]]
    seconds: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Predictor(Protocol):
    """What :class:`~synthcp3d.alarm.api.DSCAlarm` needs from the networks.

    Attributes:
        labels: class index -> name, e.g. ``{0: "background", 1: "pancreas", 2: "tumour"}``.
        preprocess: the bundle's preprocessing (as in training): ``MetaTensor (1, X, Y, Z)`` on the input grid ->
            ``MetaTensor (1, X', Y', Z')`` on the working grid, its affine tracking every spatial step.
        info: model/bundle identity for reports: ``{"model": {...}, "bundle": {...}}``.
    """

    labels: dict[int, str]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    info: dict

    def __call__(
        self, image: torch.Tensor, timer: StageTimer | None = None, segmentation: np.ndarray | None = None
    ) -> Prediction:
        """Predict on a preprocessed ``MetaTensor`` ``(1, X', Y', Z')``; time stages with ``timer`` when given.

        ``segmentation``: class indices ``(X', Y', Z')`` on the working grid to judge instead of segmenting (the
        alarm passes it only when a mask was given).
        """
        ...
