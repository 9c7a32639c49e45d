"""Does the 2D G learn its training images' colours rather than each class's? Synthesis on seen and unseen images.

    python benchmarks/synthesis_memorisation.py runs/cityscapes_demo [runs/streethazards_demo ...] [--max-train 200]

For each run folder (a Cityscapes or StreetHazards study), the report's synthesis-quality measure
(`synthcp2d.studies.measures.synthesis_per_case`: per class the error of the class's mean colour, levels 0-255) of
``G(y)`` and of the class-mean painter on the first ``--max-train`` training images (which both were fitted on) and on
the held-out split the report uses (Cityscapes val, StreetHazards test), with G's gap to the painter and its paired
bootstrap interval (`synthcp3d.evidence.synthesis_section`); then, per class, G's gap on the held-out images. A G
far better on its training images than on held-out ones has learnt those images' colours from their layouts: the
layout of a training image identifies it, its colours do not follow from it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synthcp2d.data.cityscapes import CITYSCAPES_CLASSES
from synthcp2d.data.streethazards import ANOMALY_INDEX, STREETHAZARDS_CLASSES, STREETHAZARDS_NUM_KNOWN_CLASSES
from synthcp2d.studies.cityscapes.study import CityscapesStudy
from synthcp2d.studies.common import load_painter
from synthcp2d.studies.measures import SYNTHESIZERS, synthesis_per_case
from synthcp2d.studies.streethazards import StreetHazardsStudy
from synthcp3d.evidence import synthesis_section
from synthcp3d.workflows.trained import load_network

#: study name (`study_kind`) -> (study class, class names, label without a class, held-out split)
STUDIES = {
    "cityscapes": (CityscapesStudy, list(CITYSCAPES_CLASSES), 255, "val"),
    "streethazards": (StreetHazardsStudy, list(STREETHAZARDS_CLASSES[:STREETHAZARDS_NUM_KNOWN_CLASSES]),
                      ANOMALY_INDEX, "test"),
}
MEAN = "mean_error/mean over classes"
GAP = "mean_error_gap/mean over classes"


def study_kind(folder: Path) -> str:
    """The study of a run folder, from the splits its ``prepare/cases.json`` holds (StreetHazards has a test split,
    Cityscapes a val split only)."""
    splits = set(json.loads((folder / "prepare" / "cases.json").read_text()))
    return "cityscapes" if "val" in splits and "test" not in splits else "streethazards"


def measure(folder: Path, max_train: int) -> tuple[str, dict[str, dict], dict[str, float]]:
    """-> (study, split -> synthesis rows, held-out per-class gap of G to the painter)."""
    kind = study_kind(folder)
    study_class, names, no_class, held_out = STUDIES[kind]
    study = study_class.of_run(folder)
    generator = load_network(study, "generator", "generator", "train_synthesizer")
    painter = load_painter(study)
    cases = study.cases()
    rows, per_class = {}, {}
    for split, records in (("train", cases["train"][:max_train]), (held_out, cases[held_out])):
        per_case = synthesis_per_case(study, generator, painter, records, names, no_class)
        _, rows[split] = synthesis_section(per_case, names, "levels", element="pixel", average=True)
        if split == held_out:
            g, p = (rows[split][name] for name in SYNTHESIZERS)
            per_class = {c: g[f"mean_error/{c}"] - p[f"mean_error/{c}"] for c in names}
    return kind, rows, per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--max-train", type=int, default=200, help="training images measured (default 200)")
    args = parser.parse_args()
    print("| run | study | images | G mean colour error | painter | G − painter (95 % interval) |")
    print("|---|---|---|---:|---:|---:|")
    gaps = {}
    for folder in args.runs:
        kind, rows, per_class = measure(folder, args.max_train)
        for split, r in rows.items():
            g, p = (r[name] for name in SYNTHESIZERS)
            interval = f"{g[GAP]:+.2f} ({g['mean_error_gap_low/mean over classes']:+.2f} to " \
                       f"{g['mean_error_gap_high/mean over classes']:+.2f})"
            print(f"| {folder.name} | {kind} | {split} | {g[MEAN]:.2f} | {p[MEAN]:.2f} | {interval} |")
        gaps[folder.name] = per_class
    for name, per_class in gaps.items():
        ranked = sorted(per_class.items(), key=lambda kv: -kv[1])
        cells = (f"{c} {v:+.1f}".replace("-0.0", "+0.0") for c, v in ranked)  # no negative zero
        print(f"\nG − painter per class on the held-out images, {name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
