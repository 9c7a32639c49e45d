"""Does the synthesis carry a usable signal? A non-learned synthesize-then-compare score of tumour DSC.

    python benchmarks/synthesis_difference_score.py runs/study_seed0 [runs/study_seed1 ...] [--margin 3]

The learned comparator scores the same with x̂ = G(ŷ) as with a blank x̂. This asks whether that is the comparator's
failure to learn from x̂ or the synthesis holding nothing beyond ``(x, ŷ)``. For each case (the cross-validated
predictions of the training cases, the final segmenter's predictions of the test cases), on the pancreas ROI:
the mean signed and absolute difference ``x - x̂`` in HU inside the predicted pancreas, inside the predicted tumour,
and in a ring of ``margin`` voxels around the predicted foreground, for x̂ = G(ŷ), the class-mean painter's image
and a blank image (x̂ = 0: the statistics of ``x`` itself). A ridge regression fitted on the cross-validated cases
maps them (with the predicted pancreas and tumour volumes) to the tumour DSC; the test cases are scored with it, the
"class not predicted -> DSC 0" rule applied as for every method of the report. A row with the volumes alone says
what the label map gives without any image. The learned SynthCP and Direct Prediction rows are read from the
study's ``evaluate/per_case.csv`` for the same cases. Prints one Markdown table per folder and the mean over folders.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthcp3d.metrics.quality import quality_metrics
from synthcp3d.metrics.risk_coverage import risk_coverage
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.scoring.synthesis import blank_like
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows.pancreas_scoring import roi_tensors

TUMOUR = 2
SYNTHESES = ("G(ŷ)", "class-mean painter", "blank")


def ring(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """The pixels / voxels within ``margin`` of a bool ``mask (*spatial)`` (2D or 3D), the mask left out."""
    pool = F.max_pool3d if mask.ndim == 3 else F.max_pool2d
    grown = pool(mask.float()[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0].bool()
    return grown & ~mask


def difference_statistics(diff: torch.Tensor, regions: list[torch.Tensor]) -> list[float]:
    """``diff (*spatial)`` -> the mean signed and mean absolute difference inside each bool region (0, 0 if empty)."""
    out = []
    for region in regions:
        values = diff[region]
        out += [float(values.mean()), float(values.abs().mean())] if values.numel() else [0.0, 0.0]
    return out


def _region_statistics(diff: torch.Tensor, pred: torch.Tensor, margin: int) -> list[float]:
    """``diff (*roi)`` HU, ``pred (*roi)`` labels -> mean signed and mean absolute difference inside the predicted
    pancreas, the predicted tumour and the ring of ``margin`` voxels around the predicted foreground (0 if empty)."""
    return difference_statistics(diff, [pred == 1, pred == TUMOUR, ring(pred > 0, margin)])


@torch.no_grad()
def case_features(folder: Path, margin: int) -> dict[str, dict]:
    """Per case: ``split`` (cv/test), ``true`` tumour DSC, ``volumes`` (log predicted pancreas and tumour voxels),
    ``predicted_tumour`` (bool) and one region-statistics vector per synthesis."""
    study = pm.load_study(folder)
    generator = pm.load_network(study, "generator")
    painter = pm.load_painter(study)
    hu_per_unit = (study.hu_range[1] - study.hu_range[0]) / 2.0
    cases = {cid: {"split": "cv", "pred": r["pred"], "image": r["image"], "true": r["true_dsc"][TUMOUR]}
             for cid, r in json.loads((folder / "crossval" / "cases.json").read_text()).items()}
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    with open(folder / "evaluate" / "per_case.csv", newline="") as f:
        per_case = {row["case"]: row for row in csv.DictReader(f)}
    for cid in meta["test"]:
        cases[cid] = {"split": "test", "image": meta["cases"][cid]["image"], "true": float(per_case[cid]["true_tumour"]),
                      "pred": folder / "evaluate" / "predictions" / f"{cid}_pred.nii.gz",
                      "learned": {k.split("|")[0]: float(v) for k, v in per_case[cid].items() if k.endswith("|tumour")}}
    for seed, (cid, case) in enumerate(sorted(cases.items())):
        image = pm.load_volume(case["image"]).astype(np.float32)
        pred = pm.load_volume(case["pred"]).astype(np.int64)
        x, p, _ = roi_tensors(study, image, pred)
        syntheses = dict(zip(SYNTHESES, (generator(one_hot_labels(p, study.num_classes)), painter(p, seed=seed),
                                         blank_like(x))))
        case["features"] = {name: _region_statistics(((x - s) * hu_per_unit)[0, 0], p[0], margin)
                            for name, s in syntheses.items()}
        case["volumes"] = [float(np.log1p(int((p == 1).sum()))), float(np.log1p(int((p == TUMOUR).sum())))]
        case["predicted_tumour"] = bool((p == TUMOUR).any())
    return cases


def score_table(cases: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Ridge regressions fitted on the cross-validated cases, scored on the test cases: row -> AURC, E-AURC, P.C.,
    MAE (x100), plus the learned comparators' rows on the same cases."""
    def design(case: dict, synthesis: str | None) -> list[float]:
        return case["volumes"] + (case["features"][synthesis] if synthesis else [])

    train = [c for c in cases.values() if c["split"] == "cv" and np.isfinite(c["true"])]
    test = [c for c in cases.values() if c["split"] == "test"]
    true = np.array([c["true"] for c in test])
    predictions = {}
    for synthesis in (None, *SYNTHESES):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 11)))
        model.fit(np.array([design(c, synthesis) for c in train]), np.array([c["true"] for c in train]))
        predicted = np.clip(model.predict(np.array([design(c, synthesis) for c in test])), 0.0, 1.0)
        predicted[~np.array([c["predicted_tumour"] for c in test])] = 0.0
        name = "volumes only (no image)" if synthesis is None else f"volumes + x - x̂ statistics, x̂ = {synthesis}"
        predictions[name] = predicted
    for learned in ("Direct Prediction", "SynthCP"):
        predictions[f"learned {learned} (report)"] = np.array([c["learned"][learned] for c in test])
    table = {}
    for name, predicted in predictions.items():
        rc, qm = risk_coverage(predicted, true), quality_metrics(predicted, true)
        table[name] = {"AURC": rc["AURC"], "E-AURC": rc["E-AURC"], "P.C.": qm["PC"], "MAE": qm["MAE"]}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="trained study output folders (evaluate has run)")
    parser.add_argument("--margin", type=int, default=3, help="ring width around the predicted foreground (voxels)")
    args = parser.parse_args()
    tables = []
    for folder in args.folders:
        tables.append(score_table(case_features(folder, args.margin)))
        print(f"\n{folder} (tumour DSC, x100; test cases)\n")
        _print(tables[-1])
    if len(tables) > 1:
        print(f"\nmean ± SD over {len(tables)} folders\n")
        _print({row: {k: (np.mean([t[row][k] for t in tables]), np.std([t[row][k] for t in tables]))
                      for k in tables[0][row]} for row in tables[0]})


def _print(table: dict[str, dict]) -> None:
    print("| predictor | AURC ↓ | E-AURC ↓ | P.C. ↑ | MAE ↓ |\n|---|---:|---:|---:|---:|")
    for name, row in table.items():
        cells = [f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}" for v in row.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
