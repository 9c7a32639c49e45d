"""Where is |x - G(ŷ)| large? The synthesis difference of a trained pancreas study, split by what lies there.

    python benchmarks/synthesis_difference.py runs/study_seed0 [runs/study_seed1 ...] [--margin 3]

For every test case of each study folder (the final segmenter's predictions that ``evaluate`` saved), on the
pancreas ROI: the mean |x - G(ŷ)| in HU at wrongly segmented voxels, at correctly segmented voxels within
``margin`` voxels of the predicted foreground, and farther away; the share of the difference's total farther away;
and the share of the wrongly segmented voxels farther away. Prints one Markdown row per folder. It explains what
the comparator's |x - x̂| channel carries: G is given pancreas and tumour labels only and must invent the anatomy
around them, so far from the prediction the difference measures G's guess of that anatomy, not the segmentation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.roi import crop_to_box
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows.pancreas_scoring import roi_tensors


@torch.no_grad()
def difference_split(folder: Path, margin: int = 3) -> dict[str, float]:
    """The figures of one trained study folder (see the module docstring)."""
    study = pm.load_study(folder)
    generator = pm.load_network(study, "generator")
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    hu_per_unit = (study.hu_range[1] - study.hu_range[0]) / 2.0
    parts: dict[str, list[np.ndarray]] = {"wrong": [], "right_near": [], "far": []}
    far_mass, wrong_far = [], []
    for case_id in meta["test"]:
        case = meta["cases"][case_id]
        image = pm.load_volume(case["image"]).astype(np.float32)
        label = pm.load_volume(case["label"]).astype(np.int64)
        pred = pm.load_volume(folder / "evaluate" / "predictions" / f"{case_id}_pred.nii.gz").astype(np.int64)
        x, p, box = roi_tensors(study, image, pred)
        diff = ((x - generator(one_hot_labels(p, study.num_classes))).abs()[0, 0] * hu_per_unit).cpu().numpy()
        wrong = crop_to_box(label, box, pad_value=0) != p[0].cpu().numpy()
        foreground = (p > 0).float()[:, None]
        near = F.max_pool3d(foreground, 2 * margin + 1, stride=1, padding=margin)[0, 0].bool().cpu().numpy()
        parts["wrong"].append(diff[wrong])
        parts["right_near"].append(diff[~wrong & near])
        parts["far"].append(diff[~near])
        far_mass.append(diff[~near].sum() / max(diff.sum(), 1e-12))
        wrong_far.append((wrong & ~near).sum() / max(wrong.sum(), 1))
    # a part with no voxel (e.g. no wrong voxel at all) has no mean: NaN, said so rather than warned about
    pooled = {k: np.concatenate(v) for k, v in parts.items()}
    figures = {f"mean_hu_{k}": float(v.mean()) if v.size else float("nan") for k, v in pooled.items()}
    figures["far_share_of_difference"] = float(np.mean(far_mass))
    figures["far_share_of_wrong_voxels"] = float(np.mean(wrong_far))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="trained study output folders (evaluate has run)")
    parser.add_argument("--margin", type=int, default=3, help="voxels around the predicted foreground (default 3)")
    args = parser.parse_args()
    print(f"| study | mean abs(x - G(ŷ)) at wrong voxels (HU) | at right voxels within {args.margin} | farther | "
          "share of the difference farther | share of wrong voxels farther |")
    print("|---|---:|---:|---:|---:|---:|")
    for folder in args.folders:
        f = difference_split(folder, args.margin)
        print(f"| {folder} | {f['mean_hu_wrong']:.1f} | {f['mean_hu_right_near']:.1f} | {f['mean_hu_far']:.1f} | "
              f"{100 * f['far_share_of_difference']:.0f} % | {100 * f['far_share_of_wrong_voxels']:.1f} % |")


if __name__ == "__main__":
    main()
