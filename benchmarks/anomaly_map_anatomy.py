"""What a StreetHazards SynthCP map is made of: how many pixels MSP's post-processing replaces, and the distance alone.

    python benchmarks/anomaly_map_anatomy.py runs/streethazards_demo [runs/streethazards_seed1 ...] [--t 0.999]

SynthCP's anomaly map is the feature distance between the image and ``x̂`` where the segmenter's maximum softmax
``p <= t``, and ``1 - p`` where ``p > t`` (the paper's post-processing, ``synthcp3d.scoring.anomaly.msp_postprocess``).
From the maps an evaluate stage saved (``evaluate/scores/*.npz``, with ``save_pixel_scores``), per run: the share of
pixels (anomaly and in-distribution) the post-processing replaces, and for SynthCP and each x̂ ablation the per-image
AUROC of the whole map and of its distance part alone (pixels with ``p <= t``), averaged over the images holding
both anomaly and in-distribution pixels there (scikit-learn). If almost no pixel is replaced, each row measures its
feature distance itself: a blank x̂ is then a detector of its own (the distance from an empty image's features).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

MSP_ROW = "MSP"  # the saved MSP map is 1 - p
ROWS = ("SynthCP (t={t:g})", "SynthCP (t={t:g}), x̂ = class-mean painter", "SynthCP (t={t:g}), x̂ = blank")


def _auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """AUROC, NaN unless both classes are present."""
    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else float("nan")


def anatomy(folder: Path, t: float = 0.999) -> dict[str, float]:
    """Per-image means over ``folder/evaluate/scores/*.npz``: ``replaced/anomaly``, ``replaced/in-distribution``
    (shares of pixels with ``p > t``) and, per SynthCP row, ``<row>`` and ``<row>/distance part`` AUROC (×100)."""
    paths = sorted((folder / "evaluate" / "scores").glob("*.npz"))
    if not paths:
        raise SystemExit(f"{folder}: no evaluate/scores/*.npz (run evaluate with save_pixel_scores)")
    rows = [r.format(t=t) for r in ROWS]
    values: dict[str, list[float]] = {}
    for path in paths:
        with np.load(path) as data:
            anomaly = data["is_anomaly"].ravel().astype(bool)
            if anomaly.all() or not anomaly.any():
                continue
            replaced = 1.0 - data[MSP_ROW].ravel() > t
            values.setdefault("replaced/anomaly", []).append(float(replaced[anomaly].mean()))
            values.setdefault("replaced/in-distribution", []).append(float(replaced[~anomaly].mean()))
            for row in rows:
                score = data[row].ravel()
                values.setdefault(row, []).append(_auroc(anomaly, score))
                values.setdefault(f"{row}/distance part", []).append(_auroc(anomaly[~replaced], score[~replaced]))
    return {k: 100.0 * float(np.nanmean(v)) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--t", type=float, default=0.999, help="the SynthCP rows' threshold (default 0.999)")
    args = parser.parse_args()
    results = {folder.name: anatomy(folder, args.t) for folder in args.runs}
    keys = list(next(iter(results.values())))
    print("| figure (per-image mean, ×100) | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r.get(key, float('nan')):.1f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
