"""The Cityscapes study's ``evaluate`` stage: every segmenter (and the cross-model pair) scored on the val split
(``scoring``), then Table 1 written as ``evaluate/report.{md,json,csv}``, the core's per-segmenter image-level
reports and the Fig. 5 panel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from synthcp2d.data.cityscapes import CITYSCAPES_CLASSES
from synthcp2d.studies.cityscapes.scoring import SegmenterScores, load_judges, score_segmenter
from synthcp2d.studies.cityscapes.study import (
    IGNORE,
    IMAGE_METHODS,
    PIXEL_COLUMNS,
    PIXEL_METHODS,
    REDUCTIONS,
    CityscapesStudy,
    segmenter_factories,
)
from synthcp2d.studies.common import Factory, load_painter
from synthcp2d.studies.figures import metrics_markdown, panel_figure, pooled_ranking_note
from synthcp2d.studies.measures import synthesis_per_case
from synthcp3d.scoring.synthesis import X_HAT_ABLATIONS
from synthcp3d.evidence import synthesis_section, synthesis_use_section
from synthcp3d.metrics import DEFAULT_MAX_BINS, check_max_bins
from synthcp3d.report import METRIC_COLUMNS, quality_report
from synthcp3d.utils.atomic import atomic_save_json, atomic_save_text
from synthcp3d.workflows.common import study_stage, write_csv_rows
from synthcp3d.workflows.trained import load_network

__all__ = ["evaluate"]

#: the classes given their own column in the synthesis and x̂-ablation sections (every class is in the mean)
SHOWN_CLASSES = ("road", "building", "vegetation", "sky", "car", "person")


@study_stage(
    "evaluate",
    after=("prepare", "train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_baselines"),
)
def evaluate(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    generator: Factory,
    comparators: Mapping[str, Factory],
    confidnet: Factory,
    mask_vae: Factory,
    pooled_max_bins: int = DEFAULT_MAX_BINS,
) -> dict:
    """Table 1 on the val split for every segmenter (+ the cross-model row) and Fig. 5 (``pooled_max_bins``: the
    distinct scores each pooled pixel row ranks exactly, see `StreamingBinaryCurve`).

    With them: the synthesis quality of ``G(y)`` against the class-mean painter on the val images, the SynthCP rows
    with ``x̂`` replaced by the painter's image and by a blank one, how far that moves SynthCP's predicted IoU, and
    each segmenter's val mIoU in its tables' headings.

    Writes ``evaluate/report.{md,json,csv}``, per segmenter ``evaluate/<name>/image_level.{md,csv,json}`` +
    ``per_case.csv`` (the core's `quality_report`: per-image predicted and true IoU) and
    ``evaluate/<name>/scores/<case>.npz`` (error, ignore and every method's error map), and ``evaluate/fig5.png``.
    """
    max_bins = check_max_bins(pooled_max_bins, "pooled_max_bins")
    segmenters = segmenter_factories(segmenters, study)
    g = load_network(study, "generator", "generator", "train_synthesizer", generator)
    painter = load_painter(study)
    vae = load_network(study, "mask_vae", "vae", "train_baselines", mask_vae)
    val = study.cases()["val"]
    out = study.stage_dir("evaluate")
    synthesis = synthesis_section(
        synthesis_per_case(study, g, painter, val, CITYSCAPES_CLASSES, IGNORE), CITYSCAPES_CLASSES,
        "levels", shown=SHOWN_CLASSES,
        where=f"the {len(val)} val images' ground-truth label maps (levels: colour values 0-255)",
        element="pixel", average=True,
    )
    runs = [(name, name, f"{name}", True) for name in study.segmenters]
    if study.cross_model and all(s in study.segmenters for s in study.cross_model):
        source, target = study.cross_model
        runs.append((target, source, f"{target}_judged_by_{source}", False))
    pixel: dict[str, dict] = {}
    image: dict[str, dict] = {}
    scored: dict[str, SegmenterScores] = {}
    fig_rows: list = []
    for name, source, key, baselines in runs:
        judges = load_judges(study, name, source, segmenters, comparators, confidnet)
        run_dir = out / key
        run_dir.mkdir(parents=True, exist_ok=True)
        scores = score_segmenter(study, judges, g, painter, vae, val, run_dir, baselines, not fig_rows, max_bins)
        fig_rows = fig_rows or scores.fig_rows
        pixel[key], scored[key] = scores.tables, scores
        report = quality_report(
            scores.preds,
            scores.true,
            [v["case"] for v in val],
            list(CITYSCAPES_CLASSES),
            run_dir,
            groups={"mean over classes": list(CITYSCAPES_CLASSES)},
            plot_classes=["road", "car"],
            title=f"Cityscapes image-level IoU prediction, {key}",
            quality_name="IoU",
            prefix="image_level",
            notes=[f"val split, {len(val)} images; classes absent from both label and prediction are excluded"],
        )
        image[key] = report
    if fig_rows:
        panel_figure(
            fig_rows, out / "fig5.png", title=f"Cityscapes failure detection, {study.segmenters[0]} (cf. Fig. 5)"
        )
    markdown = _write_report(study, scored, image, runs, len(val), synthesis, out)
    print(markdown, flush=True)
    print(
        f"report: {out / 'report.md'} (+ .json, .csv); per-image scores: {out}/<segmenter>/; figure: {out / 'fig5.png'}"
    )
    return {"pixel": pixel, "report": str(out / "report.md")}


def _image_table(report: Any) -> dict[str, dict[str, float]]:
    """The class-averaged row of the core report (its first table)."""
    return next(iter(report.tables.values())) if report.tables else {}


def _synthesis_use(scores: SegmenterScores) -> dict[str, tuple[str, dict]]:
    """Per SynthCP mode: how far its predicted IoU moves with ``x̂`` replaced, over the (image, class) pairs of the
    image-level table (those with a defined true IoU)."""
    undefined = np.isnan(scores.true)
    sections = {}
    for row in ("SynthCP-separate", "SynthCP-joint"):
        if row not in scores.preds:
            continue
        variants = {suffix.lstrip(", "): np.where(undefined, np.nan, scores.preds[row + suffix])
                    for suffix in X_HAT_ABLATIONS}
        sections[row] = synthesis_use_section(np.where(undefined, np.nan, scores.preds[row]), variants,
                                              CITYSCAPES_CLASSES, name=row, shown=SHOWN_CLASSES, average=True)
    return sections


def _write_report(
    study: CityscapesStudy, scored: dict, image: dict, runs: list, num_val: int, synthesis: tuple, out: Any
) -> str:
    """Table 1 of every run (+ the synthesis quality and the x̂ ablation's sections) -> ``report.md`` (returned),
    ``report.json`` and ``report.csv`` in ``out``."""
    pixel = {key: s.tables for key, s in scored.items()}
    lines = [
        "# Cityscapes failure detection (SynthCP Table 1)",
        "",
        f"settings: {study.settings_name}; {num_val} val images at {list(study.image_size)}; comparators and "
        "regressors "
        f"trained on {study.num_folds}-fold cross-validated predictions of the training split "
        f"(folds: {'contiguous blocks of cities' if study.fold_split == 'city' else 'seeded, cities kept whole'}); "
        f"MC-Dropout samples {study.mc_samples}.",
        "All values ×100. Image level: per-class IoU of each val image, MAE / STD of |predicted − true|, "
        "Pearson (P.C.) "
        "and Spearman (S.C.) per class, then averaged over classes; (image, class) pairs absent from both label and "
        "prediction are excluded. Pixel level: error pixels positive, ignore-label pixels excluded.",
        "Rows 'SynthCP-…, x̂ = class-mean painter' and '…, x̂ = blank': the same trained comparator fed the class-mean "
        "painter's image of ŷ (training mean colour per class plus noise of its training SD) or a blank mid-grey image "
        "in place of G(ŷ). Segmenter mIoU: dataset-level IoU on the val split (intersections and unions summed over "
        "the images), averaged over the classes labelled or predicted there.",
        "",
    ]
    use: dict[str, dict] = {}
    for name, source, key, _ in runs:
        title = key if name == source else f"{name} masks judged by comparators trained on {source} (cross-model)"
        title += f" (segmenter val mIoU {scored[key].miou:.3f})"
        lines += [f"## {title} — image level", ""]
        rows = _image_table(image[key])
        cols = [(k, h) for k, h in METRIC_COLUMNS]
        lines += [metrics_markdown({m: rows[m] for m in IMAGE_METHODS if m in rows}, cols), ""]
        for reduction in REDUCTIONS:
            note = (
                f"all val pixels pooled; {pooled_ranking_note(pixel[key]['pooled'])}"
                if reduction == "pooled"
                else "per image, then the mean over images holding both error and correct pixels"
            )
            lines += [f"## {title} — pixel level, reduction `{reduction}`: {note}", ""]
            table = pixel[key][reduction]
            lines += [metrics_markdown({m: table[m] for m in PIXEL_METHODS if m in table}, PIXEL_COLUMNS), ""]
        for row, (md, data) in _synthesis_use(scored[key]).items():
            lines += [md.replace("## Does", f"## {key}: does", 1), ""]
            use.setdefault(key, {})[row] = data
    lines += [synthesis[0], ""]
    markdown = "\n".join(lines)
    atomic_save_text(markdown, out / "report.md")
    atomic_save_json(
        {"pixel": pixel, "image": {k: v.tables for k, v in image.items()}, "settings": study.describe(),
         "segmenter_miou": {k: s.miou for k, s in scored.items()},
         "segmenter_class_iou": {k: dict(zip(CITYSCAPES_CLASSES, s.class_iou.tolist())) for k, s in scored.items()},
         "synthesis": synthesis[1], "synthesis_use": use, "num_val": num_val},
        out / "report.json",
    )
    rows_csv = [
        {"run": k, "level": f"pixel/{r}", "method": m, **{c: v.get(c) for c, _ in PIXEL_COLUMNS}}
        for k, t in pixel.items()
        for r in REDUCTIONS
        for m, v in t[r].items()
    ]
    write_csv_rows(rows_csv, out / "report.csv")
    return markdown
