"""What the 2D studies measure beside their tables: the synthesis quality of ``G`` against the class-mean painter
(`synthesis_per_case`) and the judged segmenter's dataset-level IoU (`DatasetIoU`). The measures themselves, and
the x̂ ablation's inputs, are the dimension-generic core's (``synthcp3d.scoring.synthesis``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from synthcp2d.studies.common import StreetStudy, image_tensor, load_cached, synthesize
from synthcp3d.scoring.synthesis import PAINTER_NAME, ClassMeanPainter, synthesis_quality

__all__ = ["SYNTHESIZERS", "LEVELS_PER_UNIT", "DatasetIoU", "synthesis_per_case"]

#: the synthesizers of the synthesis-quality table: SPADE and its non-learned replacement
SYNTHESIZERS = ("2D SPADE G(y)", PAINTER_NAME)
#: colour levels (0-255) per unit of the [-1, 1] images
LEVELS_PER_UNIT = 127.5


@torch.no_grad()
def synthesis_per_case(
    study: StreetStudy,
    generator: torch.nn.Module,
    painter: ClassMeanPainter,
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    ignore_index: int | None,
) -> dict[str, list[dict[str, float]]]:
    """``G(y)`` and the painter's image of each record's ground truth ``y`` against its real image (see
    `synthcp3d.scoring.synthesis.synthesis_quality`; errors in colour levels 0-255, SSIM over the whole image).
    ``ignore_index`` pixels (no known class) get an all-zero one-hot vector in G and the overall mean from the
    painter, and count for no class. Returns synthesizer name -> one quality dict per record."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name in SYNTHESIZERS}
    for k, record in enumerate(records):
        case = load_cached(record["cache"])
        x = image_tensor(case["image"])
        label = torch.as_tensor(case["label"].astype(np.int64))  # (1, H, W)
        candidates = (
            synthesize(generator, label[None].to(study.torch_device), study.num_classes, ignore_index)[0].cpu(),
            painter(label, seed=int(study.seed) + k, ignore_index=ignore_index)[0],
        )
        for name, image in zip(SYNTHESIZERS, candidates):
            out[name].append(synthesis_quality(image, x, label, class_names, scale=LEVELS_PER_UNIT, data_range=2.0))
    return out


class DatasetIoU:
    """A segmenter's dataset-level IoU (the benchmarks' mIoU): per class, intersection and union summed over every
    image, then the mean over the classes with a non-empty union. ``ignore_index`` pixels count for nothing."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one prediction and its label map (same shape, class indices)."""
        pred, label = pred.reshape(-1).long().cpu(), label.reshape(-1).long().cpu()
        if self.ignore_index is not None:
            keep = label != self.ignore_index
            pred, label = pred[keep], label[keep]
        c = self.num_classes
        self.intersection += torch.bincount(label[pred == label], minlength=c)[:c].numpy()
        self.union += (torch.bincount(label, minlength=c)[:c] + torch.bincount(pred, minlength=c)[:c]).numpy()
        self.union -= torch.bincount(label[pred == label], minlength=c)[:c].numpy()

    def per_class(self) -> np.ndarray:
        """IoU per class ``(C,)``; NaN for a class neither predicted nor labelled."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def mean(self) -> float:
        iou = self.per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
