"""Does a DSC predictor look at the mask it judges? Each test image judged with masks of known, different quality.

    python benchmarks/mask_sensitivity.py runs/study_seed0 [runs/study_seed1 ...] [--cases N]

On the study's test split every image has one segmentation, so a predictor that reads only the image (how hard
this case looks) can rank cases as well as one that compares the image with the mask: Table 2 cannot tell them
apart, and the "x̂ = blank" row scoring like SynthCP is what that looks like. The DSC alarm, though, is offered for
judging *any* model's mask of an image. Here each test image is judged with several masks made from its ground
truth (working grid): the ground truth itself, its tumour dilated by 1 and 2 voxels, eroded by 1, shifted by 10 and
20 mm, and a tumour of the same size put elsewhere in the gland (the real one labelled pancreas), plus the
segmenter's own mask. Their true tumour DSC (each case's own label grid, as in the report) differs for one image,
so only a predictor that compares can follow it.

Measures per predictor, tumour DSC, over the (image, mask) pairs with a defined true DSC:

- ``within-image Spearman``: the rank correlation of predicted and true DSC across one image's masks, averaged over
  images (a predictor blind to the mask scores 0 there; the ``x̂ = blank`` comparator sees the mask only through
  where the ROI is centred);
- ``pair order``: among two masks of the same image whose true DSC differs by more than 0.2, the share ranked in
  the right order (ties count a half: 50 = blind);
- ``GT > shifted``: the share of images whose ground truth is rated above the same tumour shifted 20 mm (same
  size, so a predictor that reads the mask's size scores 50; ties count a half);
- ``pooled Spearman`` and ``MAE`` over every pair (images and masks mixed).

These masks are not what the comparators were trained on (the cross-validated segmenters' masks): this measures
how the trained predictors generalise to another model's errors, which is what the alarm's ``--mask`` does.
Prints one Markdown table per folder and the mean ± SD over folders.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats
from tqdm.auto import tqdm

from synthcp3d.engines.mask_perturbation import ball, ball_at
from synthcp3d.evidence import comparison_figure
from synthcp3d.roi import crop_to_box
from synthcp3d.scoring.base import run_scorer
from synthcp3d.scoring.ensemble import pairwise_agreement
from synthcp3d.scoring.synthesis import replaced_syntheses
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows.pancreas_scoring import (
    Comparison,
    native_dsc,
    not_predicted_is_zero,
    segment_volume,
    synthesize_and_compare,
    vae_alarm_dsc,
    volume_feature,
)

TUMOUR, PANCREAS = 2, 1
SHIFTED = "tumour shifted 20 mm"
PREDICTORS = ("SynthCP", "SynthCP, x̂ = class-mean painter", "SynthCP, x̂ = blank", "Direct Prediction",
              "Predicted volume (no image)", "VAE alarm", "Pairwise Dice (fold ensemble)")


def _with_tumour(label: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """``label`` with its tumour replaced by ``tumour`` (bool): the old tumour's voxels become pancreas."""
    out = np.where(label == TUMOUR, PANCREAS, label).astype(np.uint8)
    out[tumour] = TUMOUR
    return out


def _displaced(tumour: np.ndarray, gland: np.ndarray, voxels: int) -> np.ndarray:
    """The tumour moved by ``voxels`` along the in-plane axis where the moved copy overlaps the gland most."""
    best, best_overlap = tumour, -1
    for axis in (0, 1):
        for sign in (-1, 1):
            moved = ndimage.shift(tumour.astype(np.uint8), [sign * voxels if a == axis else 0 for a in range(3)],
                                  order=0, mode="constant").astype(bool)
            overlap = int((moved & gland).sum())
            if overlap > best_overlap and moved.any():
                best, best_overlap = moved, overlap
    return best


def _relocated(tumour: np.ndarray, gland: np.ndarray, radius_without: int) -> np.ndarray:
    """A ball of the tumour's volume centred on the gland voxel farthest from the real tumour, inside the gland; in
    a tumour-free gland a ball of ``radius_without`` voxels farthest from the gland's centre."""
    radius = radius_without
    if tumour.any():
        radius = max(int(round((3 * int(tumour.sum()) / (4 * np.pi)) ** (1 / 3))), 1)
    inside = np.argwhere(gland & ~tumour)
    if not len(inside):
        return np.zeros_like(tumour)
    centre = np.argwhere(tumour).mean(0) if tumour.any() else inside.mean(0)
    target = inside[np.argmax(((inside - centre) ** 2).sum(1))]
    return ball_at(tumour.shape, target, radius) & gland


def judged_masks(label: np.ndarray, spacing: tuple[float, ...], pred: np.ndarray) -> dict[str, np.ndarray]:
    """Mask name -> a segmentation ``(H, W, D)`` of the image whose ground truth is ``label`` (working grid)."""
    tumour, gland = label == TUMOUR, label > 0
    step_mm = float(spacing[0])
    masks = {"segmenter": pred.astype(np.uint8), "ground truth": label.astype(np.uint8)}
    if tumour.any():
        masks["tumour dilated 1"] = _with_tumour(label, ndimage.binary_dilation(tumour, ball(1, 3)))
        masks["tumour dilated 2"] = _with_tumour(label, ndimage.binary_dilation(tumour, ball(2, 3)))
        eroded = ndimage.binary_erosion(tumour, ball(1, 3))
        if eroded.any():
            masks["tumour eroded 1"] = _with_tumour(label, eroded)
        for mm in (10, 20):
            masks[f"tumour shifted {mm} mm"] = _with_tumour(label, _displaced(tumour, gland, round(mm / step_mm)))
    # without a tumour: a 10 mm one, the smallest the phantoms draw (phantom_anatomy.py)
    elsewhere = _relocated(tumour, gland, radius_without=max(round(5.0 / step_mm), 1))
    if elsewhere.any():
        masks["tumour elsewhere in the gland"] = _with_tumour(label, elsewhere)
    return masks


@torch.no_grad()
def judge(
    study, nets, image: np.ndarray, mask: np.ndarray, fold_masks: list[np.ndarray], seed: int
) -> tuple[dict[str, float], Comparison, torch.Tensor]:
    """Every predictor's tumour DSC of ``mask`` (``"class not predicted -> 0"`` applied to all), SynthCP's
    comparison and the painter's image of the ROI ``(1, 1, *roi)``. The same scorers as `score_case`, without
    MC-Dropout and with the fold models' masks of the image computed once for all its masks (``fold_masks``)."""
    judged = synthesize_and_compare(study, nets.generator, nets.synthcp, image, mask)
    inputs = {"image": judged.x_roi, "segmentation": judged.onehot, "direct_comparator": nets.direct}
    replaced = replaced_syntheses(nets.painter, judged.pred_roi, judged.synthesis, seed=seed)
    raw = {
        "SynthCP": judged.quality,
        **{"SynthCP" + suffix: run_scorer("synthcp", {**inputs, "comparator": nets.synthcp, "synthesis": x_hat})
           .quality[0].float().cpu().numpy() for suffix, x_hat in replaced.items()},
        "Direct Prediction": run_scorer("direct", inputs).quality[0].float().cpu().numpy(),
        "Predicted volume (no image)": nets.volume_regressor.predict(volume_feature(study, mask)[None])[0],
        "VAE alarm": vae_alarm_dsc(study, nets.vae, nets.vae_regressor, mask),
        "Pairwise Dice (fold ensemble)": pairwise_agreement(
            [torch.as_tensor(m.astype(np.int64))[None] for m in (mask, *fold_masks)], study.num_classes
        )[0].numpy(),
    }
    dsc = {name: float(not_predicted_is_zero(np.asarray(q, dtype=np.float64), mask)[TUMOUR]) for name, q in raw.items()}
    return dsc, judged, next(iter(replaced.values()))


def _panel(judged: Comparison, painted: torch.Tensor, label: np.ndarray, caption: str) -> dict:
    """The axial ROI slice with the most tumour (ground truth, else the mask's) for `comparison_figure`."""
    label_roi = crop_to_box(label.astype(np.int64), judged.box, pad_value=0)
    pred_roi = judged.pred_roi[0].cpu().numpy()
    tumour = (label_roi == TUMOUR).sum(axis=(0, 1))
    tumour = tumour if tumour.any() else (pred_roi == TUMOUR).sum(axis=(0, 1))
    z = int(np.argmax(tumour))
    return {"image": judged.x_roi[0, 0, ..., z].cpu().numpy(), "label": label_roi[..., z], "pred": pred_roi[..., z],
            "synthesis": judged.synthesis[0, 0, ..., z].float().cpu().numpy(),
            "painter": painted[0, 0, ..., z].cpu().numpy(), "error_prob": judged.error[..., z].float().cpu().numpy(),
            "error": (label_roi != pred_roi)[..., z], "caption": caption}


def run_folder(folder: Path, max_cases: int | None, figure: Path | None = None) -> list[dict]:
    """One row per (test image, mask): ``case``, ``mask``, ``true`` tumour DSC and each predictor's. ``figure``:
    also draw every mask of the test image with the median-sized ground-truth tumour (`comparison_figure`)."""
    study = pm.load_study(folder)
    nets = pm.load_trained_models(study)
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    test = meta["test"][:max_cases]
    sizes = {cid: meta["cases"][cid]["tumour_voxels"] for cid in test if meta["cases"][cid]["tumour_voxels"]}
    shown = sorted(sizes, key=sizes.get)[len(sizes) // 2] if sizes else None
    rows, panels = [], []
    for index, cid in enumerate(tqdm(test, desc=folder.name)):
        case = meta["cases"][cid]
        image = pm.load_volume(case["image"]).astype(np.float32)
        label = pm.load_volume(case["label"]).astype(np.uint8)
        pred = pm.load_volume(folder / "evaluate" / "predictions" / f"{cid}_pred.nii.gz").astype(np.uint8)
        fold_masks = [segment_volume(study, net, image) for net in nets.fold_segmenters]
        for name, mask in judged_masks(label, study.spacing, pred).items():
            true = float(native_dsc(study, mask, case)[TUMOUR])
            dsc, judged, painted = judge(study, nets, image, mask, fold_masks, index)
            rows.append({"case": cid, "mask": name, "true": true, **dsc})
            if cid == shown:
                panels.append(_panel(judged, painted, label, f"{name}\ntumour DSC true {true:.2f} / SynthCP "
                                     f"{dsc['SynthCP']:.2f}\nx̂ blank {dsc['SynthCP, x̂ = blank']:.2f} / Direct "
                                     f"{dsc['Direct Prediction']:.2f}"))
    if figure is not None and panels:
        comparison_figure(panels, figure, title=f"{folder.name}, {shown}: one image judged with masks of known DSC")
    return rows


def _spearman(predicted: np.ndarray, true: np.ndarray, blind: float) -> float:
    """Spearman's rho; ``blind`` where either side is constant (undefined)."""
    if np.ptp(predicted) == 0 or np.ptp(true) == 0:
        return blind
    return float(stats.spearmanr(predicted, true).statistic)


def measures(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Predictor -> within-image Spearman, pair order (%), GT > shifted (%), pooled Spearman, MAE (x100)."""
    rows = [r for r in rows if np.isfinite(r["true"])]
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    table = {}
    for name in PREDICTORS:
        within, order, displaced = [], [], []
        for case_rows in by_case.values():
            named = {r["mask"]: r[name] for r in case_rows}
            if "ground truth" in named and SHIFTED in named:
                gap = named["ground truth"] - named[SHIFTED]
                displaced.append(1.0 if gap > 0 else 0.5 if gap == 0 else 0.0)
            true = np.array([r["true"] for r in case_rows])
            pred = np.array([r[name] for r in case_rows])
            if len(np.unique(true)) >= 3:
                within.append(_spearman(pred, true, blind=0.0))  # a constant prediction is blind to the mask
            for i in range(len(true)):
                for j in range(i + 1, len(true)):
                    if abs(true[i] - true[j]) > 0.2:
                        agree = np.sign(pred[i] - pred[j]) * np.sign(true[i] - true[j])
                        order.append(1.0 if agree > 0 else 0.5 if agree == 0 else 0.0)
        true = np.array([r["true"] for r in rows])
        pred = np.array([r[name] for r in rows])
        finite = np.isfinite(pred)
        table[name] = {
            "within-image Spearman": 100 * float(np.mean(within)),
            "pair order": 100 * float(np.mean(order)),
            "GT > shifted": 100 * float(np.mean(displaced)),
            "pooled Spearman": 100 * _spearman(pred[finite], true[finite], blind=float("nan")),
            "MAE": 100 * float(np.mean(np.abs(pred[finite] - true[finite]))),
        }
    return table


def means_by_mask(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mask name -> number of (image, mask) pairs with a defined true DSC, the mean true and each predictor's mean
    predicted tumour DSC (x100)."""
    out: dict[str, dict[str, float]] = {}
    for mask in dict.fromkeys(r["mask"] for r in rows):
        chosen = [r for r in rows if r["mask"] == mask and np.isfinite(r["true"])]
        if chosen:
            out[mask] = {"n": float(len(chosen)), "true": 100 * float(np.mean([r["true"] for r in chosen])),
                         **{name: 100 * float(np.nanmean([r[name] for r in chosen])) for name in PREDICTORS}}
    return out


def _print_means(means: dict[str, dict[str, float]]) -> None:
    names = ["n", "true", *PREDICTORS]
    print("| mask | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for mask, row in means.items():
        print(f"| {mask} | " + " | ".join(f"{row[k]:.0f}" for k in names) + " |")


def _print(table: dict[str, dict]) -> None:
    print("| predictor | within-image Spearman ↑ | pair order ↑ | GT > shifted ↑ | pooled Spearman ↑ | MAE ↓ |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in table.items():
        cells = [f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}" for v in row.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="trained study output folders (evaluate has run)")
    parser.add_argument("--cases", type=int, default=None, help="only the first N test cases (a quick look)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of one test image's masks (first folder)")
    parser.add_argument("--rows", type=Path, default=None, help="also write every (image, mask) row as JSON here")
    parser.add_argument("--from-rows", type=Path, default=None,
                        help="recompute the tables from a --rows file (folders: its keys) instead of scoring again")
    args = parser.parse_args()
    saved = json.loads(args.from_rows.read_text()) if args.from_rows else {}
    tables, all_rows = [], {}
    for number, folder in enumerate(args.folders):
        if saved:
            rows = saved[str(folder)]
        else:
            rows = run_folder(folder, args.cases, args.figure if number == 0 else None)
        all_rows[str(folder)] = rows
        tables.append(measures(rows))
        counts = {}
        for r in rows:
            counts[r["mask"]] = counts.get(r["mask"], 0) + 1
        print(f"\n{folder}: {len({r['case'] for r in rows})} test images, {len(rows)} masks "
              f"({', '.join(f'{k} {v}' for k, v in counts.items())}); tumour DSC, x100\n")
        _print(tables[-1])
    if args.rows:
        args.rows.write_text(json.dumps(all_rows, indent=1))
    print("\nmean tumour DSC per mask (x100; true, then each predictor's), every folder's pairs pooled\n")
    _print_means(means_by_mask([r for rows in all_rows.values() for r in rows]))
    if len(tables) > 1:
        print(f"\nmean ± SD over {len(tables)} folders\n")
        _print({row: {k: (np.mean([t[row][k] for t in tables]), np.std([t[row][k] for t in tables]))
                      for k in tables[0][row]} for row in tables[0]})


if __name__ == "__main__":
    main()
