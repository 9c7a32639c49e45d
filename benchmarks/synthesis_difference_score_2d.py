"""Does the 2D synthesis carry a usable signal? A non-learned synthesize-then-compare score of per-class IoU.

    python benchmarks/synthesis_difference_score_2d.py runs/cityscapes_demo [--segmenter fcn8] [--margin 3]

The Cityscapes twin of ``benchmarks/synthesis_difference_score.py`` (the 3D study's test). The learned comparators
score about the same with x̂ = G(ŷ) as with a blank x̂; is that their failure to learn from x̂, or does the synthesis
hold nothing beyond ``(x, ŷ)``? For every (image, class) pair with a defined IoU (the cross-validated predictions of
the training images, the final segmenter's predictions of the val images, as the report): the log of the class's
predicted share of the image (the report's "Predicted area (no image)" feature) and the mean signed and absolute
difference ``x - x̂`` (colour levels, averaged over R, G, B) inside the predicted class and in a ring of ``margin``
pixels around it, for x̂ = G(ŷ), the class-mean painter's image and a blank image (x̂ = mid-grey: the statistics of
``x`` itself). One ridge regression per class, fitted on the training images, maps them to the class's IoU; the val
images are scored with it, a class not predicted in an image predicted 0 as for every method of the report. The
report's own rows (the linear "Predicted area" map and the learned comparators) are read from
``evaluate/<segmenter>/per_case.csv`` for the same pairs. Metrics as the report's: per class, then the mean over
classes (×100).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthcp2d.data.cityscapes import CITYSCAPES_CLASSES
from synthcp2d.studies.cityscapes.study import CityscapesStudy, area_feature
from synthcp2d.studies.common import image_tensor, load_cached, load_painter, synthesize
from synthcp2d.studies.measures import LEVELS_PER_UNIT
from synthcp3d.engines.crossval import load_prediction
from synthcp3d.metrics.quality import quality_metrics
from synthcp3d.scoring.synthesis import blank_like
from synthcp3d.workflows.trained import load_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthesis_difference_score import difference_statistics, ring  # noqa: E402

SYNTHESES = ("G(ŷ)", "class-mean painter", "blank")
LEARNED = ("Predicted area (no image)", "Direct Prediction", "SynthCP-separate", "SynthCP-joint")


@torch.no_grad()
def image_features(x: torch.Tensor, pred: torch.Tensor, generator, painter, seed: int, margin: int) -> np.ndarray:
    """``x (3, H, W)``, ``pred (H, W)`` -> ``(C, 1 + 4 * 3)``: per class, the log predicted area share (NaN: not
    predicted) and, per synthesis, the mean signed and absolute x - x̂ inside the predicted class and around it."""
    num_classes = len(CITYSCAPES_CLASSES)
    syntheses = (synthesize(generator, pred[None], num_classes)[0], painter(pred[None], seed=seed)[0], blank_like(x))
    diffs = [((x - s) * LEVELS_PER_UNIT).mean(0) for s in syntheses]  # (H, W) each, mean over R, G, B
    area = area_feature(pred, num_classes)
    rows = []
    for c in range(num_classes):
        mask = pred == c
        regions = [mask, ring(mask, margin)]
        rows.append([area[c]] + [v for diff in diffs for v in difference_statistics(diff, regions)])
    return np.asarray(rows, dtype=np.float64)


def study_cases(folder: Path, segmenter: str, margin: int) -> dict[str, dict]:
    """``{"cv": ..., "val": ...}``: per split, the features ``(N, C, F)`` and the true IoU ``(N, C)`` (NaN:
    undefined); for val also the report's predictions ``{row: (N, C)}``."""
    # the study of the run folder (its data folder is only a record here), for its own loaders and moved paths
    study = CityscapesStudy.of_run(folder)
    generator = load_network(study, "generator", "generator", "train_synthesizer")
    painter = load_painter(study)
    names = list(CITYSCAPES_CLASSES)
    cv_records = study.resolve_paths(json.loads((study.cv_dir(segmenter) / "cases.json").read_text()), "crossval")
    with open(folder / "evaluate" / segmenter / "per_case.csv", newline="") as f:
        val_rows = list(csv.DictReader(f))
    val_cache = {c["case"]: c["cache"] for c in study.cases()["val"]}

    def features(cache: str, pred: np.ndarray, seed: int) -> np.ndarray:
        x = image_tensor(load_cached(cache)["image"])
        return image_features(x, torch.as_tensor(pred.astype(np.int64)), generator, painter, seed, margin)

    cv = {"features": [], "true": []}
    for seed, (case, record) in enumerate(sorted(cv_records.items())):
        cv["features"].append(features(record["cache"], load_prediction(record["pred"]), seed))
        cv["true"].append(np.asarray(record["true_iou"], dtype=np.float64))
    val = {"features": [], "true": [], "learned": {row: [] for row in LEARNED}}
    for seed, row in enumerate(val_rows):
        with np.load(folder / "evaluate" / segmenter / "scores" / f"{row['case']}.npz") as scores:
            pred = scores["pred"]
        val["features"].append(features(val_cache[row["case"]], pred, 10_000 + seed))
        val["true"].append(np.array([float(row[f"true_{n}"]) for n in names]))
        for learned in LEARNED:
            val["learned"][learned].append([float(row[f"{learned}|{n}"]) for n in names])
    return {
        "cv": {k: np.stack(v) for k, v in cv.items()},
        "val": {"features": np.stack(val["features"]), "true": np.stack(val["true"]),
                "learned": {k: np.asarray(v) for k, v in val["learned"].items()}},
    }


def score_table(cases: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per-class ridge regressions fitted on the CV pairs, scored on the val pairs: row -> MAE, P.C., S.C. (x100),
    the report's rows beside them."""
    cv, val = cases["cv"], cases["val"]
    num_classes = val["true"].shape[1]
    columns = {None: [0]} | {s: [0, *range(1 + 4 * i, 5 + 4 * i)] for i, s in enumerate(SYNTHESES)}
    predictions = {}
    for synthesis, cols in columns.items():
        predicted = np.zeros_like(val["true"])
        for c in range(num_classes):
            train = np.isfinite(cv["true"][:, c]) & np.isfinite(cv["features"][:, c, 0])
            present = np.isfinite(val["features"][:, c, 0])  # predicted in the val image
            if train.sum() < 3 or not present.any():
                continue  # not predicted anywhere (or never in training): 0, as the report's rule
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 11)))
            model.fit(cv["features"][train][:, c][:, cols], cv["true"][train, c])
            predicted[present, c] = np.clip(model.predict(val["features"][present][:, c][:, cols]), 0.0, 1.0)
        name = "area only (no image)" if synthesis is None else f"area + x - x̂ statistics, x̂ = {synthesis}"
        predictions[name] = predicted
    for learned, predicted in val["learned"].items():
        predictions[f"report: {learned}"] = predicted
    table = {}
    for name, predicted in predictions.items():
        metrics = quality_metrics(predicted, val["true"])
        table[name] = {"MAE": metrics["MAE"], "P.C.": metrics["PC"], "S.C.": metrics["SC"]}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a Cityscapes study output folder (evaluate has run)")
    parser.add_argument("--segmenter", nargs="+", default=["fcn8", "deeplabv2"])
    parser.add_argument("--margin", type=int, default=3, help="ring width around the predicted class (pixels)")
    args = parser.parse_args()
    for segmenter in args.segmenter:
        table = score_table(study_cases(args.folder, segmenter, args.margin))
        print(f"\n{args.folder.name}, {segmenter} (per-class IoU, x100; val images)\n")
        print("| predictor | MAE ↓ | P.C. ↑ | S.C. ↑ |\n|---|---:|---:|---:|")
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
