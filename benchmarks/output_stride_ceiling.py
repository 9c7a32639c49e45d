"""How high can a segmenter's mIoU go when it decides on a coarse grid? The oracle at each output stride.

    python benchmarks/output_stride_ceiling.py runs/cityscapes_demo [runs/streethazards_demo ...] [--strides 1 2 4 8]

FCN-8 and DeepLab-v2 score every class on a grid 8 times coarser than the image and upsample the scores
bilinearly. On the held-out split of a 2D study folder (after ``train_synthesizer``, whose painter names the classes), this takes the ground truth itself as
the scores — one-hot labels averaged over each ``stride x stride`` block, upsampled bilinearly, argmax — and prints
the dataset-level mIoU of that oracle (the reports' measure: intersections and unions summed over the images, the
mean over classes labelled or predicted). No network decides better at that stride, so it bounds what more
iterations or a better recipe can give: thin classes (poles, signs, people) vanish first. Label values at or above
the study's number of classes (Cityscapes' ignore, StreetHazards' anomaly) count for nothing, as in the reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthcp2d.studies.common import load_cached
from synthcp2d.studies.measures import DatasetIoU


def oracle_miou(labels: torch.Tensor, num_classes: int, stride: int) -> tuple[float, np.ndarray]:
    """``labels`` ``(N, H, W)`` int64 -> (mIoU, ``(C,)`` IoU per class) of the oracle deciding every ``stride``
    pixels (H and W divisible by ``stride``); labels >= ``num_classes`` are ignored."""
    ignored = labels >= num_classes
    one_hot = F.one_hot(labels.clamp(max=num_classes), num_classes + 1)[..., :num_classes]  # ignored: all zero
    scores = one_hot.permute(0, 3, 1, 2).float()
    if stride > 1:
        coarse = F.avg_pool2d(scores, stride)
        scores = F.interpolate(coarse, size=labels.shape[1:], mode="bilinear", align_corners=False)
    iou = DatasetIoU(num_classes, ignore_index=num_classes)
    iou.update(scores.argmax(1), labels.masked_fill(ignored, num_classes))
    return iou.mean(), iou.per_class()


def study_labels(folder: Path) -> tuple[torch.Tensor, int, dict]:
    """The held-out label maps ``(N, H, W)`` of a 2D study folder, its number of classes and its report."""
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    held_out = meta.get("val") or meta["test"]
    labels = torch.stack([torch.from_numpy(load_cached(c["cache"])["label"][0].astype(np.int64)) for c in held_out])
    report_path = folder / "evaluate" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    num_classes = len(json.loads((folder / "models" / "painter.json").read_text())["mean"])  # the known classes
    return labels, num_classes, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="2D study output folders (train_synthesizer has run)")
    parser.add_argument("--strides", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    print("| study | held-out images | " + " | ".join(f"oracle at stride {s}" for s in args.strides)
          + " | trained segmenters (report) |")
    print("|---|---:|" + "---:|" * len(args.strides) + "---|")
    for folder in args.folders:
        labels, num_classes, report = study_labels(folder)
        cells = [f"{oracle_miou(labels, num_classes, s)[0]:.3f}" for s in args.strides]
        trained = report.get("segmenter_miou")
        if isinstance(trained, dict):
            trained = ", ".join(f"{k} {v:.3f}" for k, v in trained.items() if "judged" not in k)
        elif trained is not None:
            trained = f"{report.get('segmenter', '')} {trained:.3f}".strip()
        print(f"| {folder.name} | {labels.shape[0]} | " + " | ".join(cells) + f" | {trained or 'n/a'} |")


if __name__ == "__main__":
    main()
