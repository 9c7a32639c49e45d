"""The Cityscapes study's settings (``CityscapesStudy``), its table rows and columns, and the helpers its stages and
its scoring share: the per-class true IoU, the cross-validation records, and the VAE alarm's input and feature."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from synthcp2d.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_IGNORE_INDEX
from synthcp2d.studies.common import Factory, StreetStudy
from synthcp3d.scoring.synthesis import X_HAT_ABLATIONS
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.scoring.vae_alarm import per_class_vae_feature
from synthcp3d.scoring.volume import predicted_volume_feature
from synthcp3d.targets import per_class_quality
from synthcp3d.workflows.common import require_file

__all__ = [
    "IGNORE",
    "area_feature",
    "IMAGE_METHODS",
    "MODE_NAMES",
    "PIXEL_COLUMNS",
    "PIXEL_METHODS",
    "REDUCTIONS",
    "SYNTHCP_ROWS",
    "CityscapesStudy",
    "cv_records",
    "feature_channels",
    "segmenter_factories",
    "true_iou",
    "vae_feature",
    "vae_input",
]

IGNORE = CITYSCAPES_IGNORE_INDEX
MODE_NAMES = {"direct": "Direct Prediction", "separate": "SynthCP-separate", "joint": "SynthCP-joint"}
#: SynthCP's rows, each followed by its x̂ ablation (the same comparator fed the painter's image, a blank image)
SYNTHCP_ROWS = tuple(row + suffix for row in ("SynthCP-separate", "SynthCP-joint") for suffix in ("", *X_HAT_ABLATIONS))
#: Table 1 rows, in order (comparator rows only for the trained modes).
PIXEL_METHODS = ("MSP", "MC-Dropout", "TCP", "Direct Prediction", *SYNTHCP_ROWS)
IMAGE_METHODS = (
    "Predicted area (no image)",
    "MC-Dropout",
    "MC-Dropout (full linear map)",
    "VAE alarm",
    "Pairwise IoU (fold ensemble)",
    "Direct Prediction",
    *SYNTHCP_ROWS,
)
PIXEL_COLUMNS = (
    ("FPR95", "FPR95 ↓"),
    ("AUPR_Error", "AUPR-Error ↑"),
    ("AUPR_Success", "AUPR-Success ↑"),
    ("AUROC", "AUROC ↑"),
)
REDUCTIONS = ("pooled", "per_image")



def area_feature(pred: torch.Tensor, num_classes: int) -> np.ndarray:
    """The label-only baseline's feature of a label map ``(H, W)``: log of each class's share of the image ``(C,)``,
    NaN = not predicted (:func:`~synthcp3d.scoring.volume.predicted_volume_feature`, the image as unit area)."""
    return predicted_volume_feature(pred, num_classes, voxel_volume=1.0 / pred.numel())


@dataclass
class CityscapesStudy(StreetStudy):
    """Settings of the Cityscapes study (``configs/common.yaml``); see `StreetStudy` for the shared ones.

    Attributes:
        segmenters: names of the segmenters judged (keys of the config's ``segmenters`` mapping).
        comparator_modes: comparator variants trained per segmenter (``joint``, ``separate``, ``direct``).
        num_folds: K of the cross-validation on the training split (paper: 4).
        fold_split: ``"city"`` (contiguous blocks of cities, as the authors) or ``"seeded"`` (seeded shuffle, cities
            still never split).
        cross_model: ``(trained on, tested on)``: the comparators trained on the first segmenter's CV predictions
            judge the second one's masks (the paper: DeepLab-v2 -> FCN-8); ``None`` or an absent name: no row.
        mc_samples: MC-Dropout passes (paper: 50).
        vae_shape: ``(H, W)`` the label maps are resized to (nearest) for the VAE alarm.
        save_pixel_scores: write every method's error map per val image (``evaluate/<segmenter>/scores``).
        figure_cases: val images shown in the Fig. 5 panel.
    """

    segmenters: Sequence[str] = ("fcn8", "deeplabv2")
    comparator_modes: Sequence[str] = ("joint", "separate", "direct")
    num_folds: int = 4
    fold_split: str = "city"
    cross_model: Sequence[str] | None = ("deeplabv2", "fcn8")
    mc_samples: int = 50
    vae_shape: Sequence[int] = (64, 128)
    save_pixel_scores: bool = True
    figure_cases: int = 3

    stage_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "num_folds": ("prepare", "evaluate"),
        "fold_split": ("prepare", "evaluate"),
        "mc_samples": ("crossval", "evaluate"),
        "comparator_modes": ("train_comparator", "evaluate"),
        "vae_shape": ("train_baselines", "evaluate"),
        "cross_model": ("evaluate",),
        "save_pixel_scores": ("evaluate",),
        "figure_cases": ("evaluate",),
        "settings_name": ("evaluate",),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.segmenters = tuple(self.segmenters)
        self.comparator_modes = tuple(self.comparator_modes)
        self.vae_shape = tuple(int(v) for v in self.vae_shape)
        self.cross_model = tuple(self.cross_model) if self.cross_model else None
        if self.fold_split not in ("city", "seeded"):
            raise SynthCPInputError(f"fold_split must be 'city' or 'seeded', got {self.fold_split!r}")
        if int(self.num_folds) < 2:
            raise SynthCPInputError(f"num_folds must be at least 2, got {self.num_folds}")
        bad = [m for m in self.comparator_modes if m not in MODE_NAMES]
        if bad:
            raise SynthCPInputError(f"comparator_modes {bad} unknown; choose from {', '.join(MODE_NAMES)}")

    @property
    def num_classes(self) -> int:
        return len(CITYSCAPES_CLASSES)

    @property
    def ignore_index(self) -> int:
        return IGNORE

    def cv_dir(self, name: str) -> Any:
        return self.out / "crossval" / name


def segmenter_factories(segmenters: Mapping[str, Factory], study: CityscapesStudy) -> dict[str, Factory]:
    """The factories of the study's ``segmenters``, in its order (one-line error for a name without one)."""
    missing = [s for s in study.segmenters if s not in segmenters]
    if missing:
        raise SynthCPInputError(f"segmenters {missing} have no factory in the config's 'segmenters' mapping")
    return {s: segmenters[s] for s in study.segmenters}


def true_iou(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class IoU ``(C,)`` of one label map ``(H, W)`` (NaN: class absent from both; ignore pixels excluded)."""
    return per_class_quality(pred[None], label[None], num_classes, "iou", ignore_index=IGNORE)[0].cpu().numpy()


def cv_records(study: CityscapesStudy, name: str) -> dict[str, dict]:
    """Segmenter ``name``'s cross-validation records (``crossval/<name>/cases.json``), by case."""
    records = json.loads(require_file(study.cv_dir(name) / "cases.json", "crossval").read_text())
    return study.resolve_paths(records, "crossval")


def feature_channels(segmenter: torch.nn.Module, study: CityscapesStudy) -> int:
    """Width of the segmenter's features (the TCP head's input channels)."""
    w, h = study.image_size
    with torch.no_grad():
        return int(segmenter.forward_features(torch.zeros(1, 3, h, w, device=study.torch_device))[1].shape[1])


def vae_input(label: torch.Tensor, study: CityscapesStudy) -> torch.Tensor:
    """Label map ``(B, H, W)`` -> one-hot ``(B, C, *vae_shape)`` (nearest resize).

    A ground-truth map's ignore pixels take the class of the nearest labelled pixel: the VAE then learns the shape
    prior of complete label maps, as the predicted masks it scores are complete (an "ignore" channel would be a
    class that never appears in them).
    """
    small = F.interpolate(label[:, None].float(), size=study.vae_shape, mode="nearest").long()[:, 0]
    ignored = (small == IGNORE).cpu().numpy()
    filled = small.cpu().numpy()
    for b in range(filled.shape[0]):
        if ignored[b].any() and not ignored[b].all():
            nearest = distance_transform_edt(ignored[b], return_distances=False, return_indices=True)
            filled[b] = filled[b][tuple(nearest)]
    filled[filled == IGNORE] = 0  # an image without a single labelled pixel
    return one_hot_labels(torch.as_tensor(filled, device=label.device), study.num_classes)


@torch.no_grad()
def vae_feature(vae: torch.nn.Module, pred: torch.Tensor, study: CityscapesStudy) -> np.ndarray:
    """The VAE alarm's feature of a predicted mask ``(H, W)`` per class ``(C,)``: its VAE loss, as published (Liu et
    al.; see `synthcp3d.scoring.vae_alarm.per_class_vae_feature`)."""
    return per_class_vae_feature(vae, vae_input(pred[None].to(study.torch_device), study), "loss")
