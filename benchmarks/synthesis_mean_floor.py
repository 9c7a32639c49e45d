"""How close can a synthesizer get to the class-mean painter on per-class mean colour? Three reference predictors.

    python benchmarks/synthesis_mean_floor.py runs/streethazards_demo [runs/cityscapes_demo ...] [--seed 0]

The report's synthesis-quality measure compares, per held-out image and class, the mean colour of the synthesis
over the class's ground-truth pixels with the real image's (levels 0-255, averaged over R, G, B and the classes
present). The class-mean painter paints every class with its training mean: the best constant guess. A generator
trained as a GAN instead *samples* a plausible appearance for each image; where a class's colour varies from image
to image independently of the layout, even a perfect sampler misses by the spread between two images, not by the
spread around the mean (about sqrt(2) times as much for a Gaussian spread). This prints, on the same pixels as the
report: the painter's mean (the training mean colour per class), a perfect sampler (the class's mean colour in a
random training image holding the class, averaged over every such image), and the oracle floor 0 (the image's own
mean). A synthesizer between the painter and the sampler is sampling, not failing to learn the colours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from synthcp2d.studies.common import load_cached


def class_means(cases: list[dict], num_classes: int) -> np.ndarray:
    """``(N, C, 3)`` mean colour (levels) of each class in each cached image; NaN where the class is absent."""
    out = np.full((len(cases), num_classes, 3), np.nan)
    for i, case in enumerate(cases):
        data = load_cached(case["cache"])
        image, label = data["image"].astype(np.float64), data["label"][0]
        for c in np.unique(label):
            if c < num_classes:
                out[i, c] = image[:, label == c].mean(1)
    return out


def floors(folder: Path) -> dict[str, float]:
    """Mean over the classes (and held-out images) of the per-class mean-colour error of each reference."""
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    held_out = meta.get("val") or meta["test"]
    num_classes = len(json.loads((folder / "models" / "painter.json").read_text())["mean"])
    train, test = class_means(meta["train"], num_classes), class_means(held_out, num_classes)
    painter_mean = np.array(json.loads((folder / "models" / "painter.json").read_text())["mean"])  # [-1, 1] units
    painter_levels = (painter_mean + 1.0) * 127.5
    painter, sampler = [], []
    for c in range(num_classes):
        real = test[:, c][~np.isnan(test[:, c, 0])]  # (n, 3)
        pool = train[:, c][~np.isnan(train[:, c, 0])]  # (m, 3)
        if not len(real) or not len(pool):
            continue
        painter.append(np.abs(real - painter_levels[c]).mean())
        sampler.append(np.abs(real[:, None] - pool[None]).mean())  # every (held-out, training) pair
    return {"painter": float(np.mean(painter)), "sampler": float(np.mean(sampler)), "classes": len(painter)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="2D study output folders (train_synthesizer has run)")
    args = parser.parse_args()
    print("| study | classes | painter (training mean) | perfect sampler (a training image's colours) |")
    print("|---|---:|---:|---:|")
    for folder in args.folders:
        f = floors(folder)
        print(f"| {folder} | {f['classes']} | {f['painter']:.2f} | {f['sampler']:.2f} |")


if __name__ == "__main__":
    main()
