"""Stages of the 3D flagship study that use the trained model: ``evaluate`` (the Table-2 report on the test cases and
its evidence) and ``inference`` (segmentation + predicted DSC for a folder of new volumes).

Both score each case with :func:`synthcp3d.workflows.pancreas_scoring.score_case`, the scoring the DSC alarm shares.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from synthcp3d.data.geometry import affine_of
from synthcp3d.data.volume_io import save_like
from synthcp3d.evidence import (
    comparison_figure,
    feature_spread_section,
    pixel_section,
    segmenter_section,
    synthesis_section,
    synthesis_use_section,
)
from synthcp3d.report import quality_report
from synthcp3d.roi import crop_to_box
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import DONE, case_seed, fmt, study_stage, write_csv_rows
from synthcp3d.workflows.pancreas import cv_records
from synthcp3d.workflows.pancreas_model import (
    PANCREAS,
    TUMOUR,
    Factory,
    PancreasStudy,
    load_trained_models,
    load_volume,
    save_label_map,
    segmenter_name,
)
from synthcp3d.workflows.pancreas_scoring import (
    ABLATIONS,
    METHODS,
    CaseScores,
    native_dsc,
    score_case,
    score_synthesis,
    segment_volume,
    to_native_grid,
)

__all__ = ["evaluate", "inference"]


# ================================================================================================================
# evaluate
# ================================================================================================================
@study_stage(
    "evaluate",
    after=("prepare", "train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_vae_alarm"),
)
def evaluate(
    study: PancreasStudy,
    segmenter: Factory,
    generator: Factory,
    comparator: Factory,
    direct: Factory,
    mask_vae: Factory,
) -> dict:
    """Table 2 and its evidence: the final segmenter predicts the test cases, every method (and SynthCP with
    ``x̂`` replaced) predicts their DSC, every error map is scored per voxel, ``G`` is measured against the painter.

    True DSC is computed on each case's own label grid (:func:`native_dsc`). Writes ``evaluate/report.{md,csv,json}``,
    ``evaluate/per_case.csv``, ``evaluate/scatter_<method>_<class>.png``, ``evaluate/comparison_examples.png`` (x,
    ŷ, G(ŷ), the painter's image, |x − G(ŷ)| and the error map on five cases across the tumour DSC range) and
    ``evaluate/predictions/{case}_pred.nii.gz``; prints the report and the paths.
    """
    meta = study.cases()
    nets = load_trained_models(study, segmenter, generator, comparator, direct, mask_vae)
    out = study.stage_dir("evaluate")
    preds: dict[str, list[np.ndarray]] = {m: [] for m in (*METHODS, *ABLATIONS)}
    maps: dict[str, list[np.ndarray]] = {}
    features: dict[str, list[np.ndarray]] = {}
    errors: list[np.ndarray] = []
    synthesis: dict[str, list[dict]] = {}
    panels: list[dict] = []
    true_rows, fallbacks = [], []
    for k, case_id in enumerate(tqdm(meta["test"], desc="evaluate", disable=not study.progress)):
        case = meta["cases"][case_id]
        image = load_volume(case["image"]).astype(np.float32)
        label = load_volume(case["label"]).astype(np.int64)
        pred = segment_volume(study, nets.segmenter, image)
        save_label_map(pred, case["image"], out / "predictions" / f"{case_id}_pred.nii.gz")
        true_rows.append(native_dsc(study, pred, case))
        scores = score_case(study, nets, image, pred, seed=case_seed(study, case_id))
        for m, q in scores.quality.items():
            preds[m].append(q)
        for m, v in scores.error_maps.items():
            maps.setdefault(m, []).append(v.ravel())
        for m, f in scores.features.items():
            features.setdefault(m, []).append(f)
        label_roi = crop_to_box(label, scores.box, pad_value=0)
        errors.append((label_roi != scores.pred_roi).ravel())
        panels.append(_figure_panel(scores, label_roi, case_id, true_rows[-1]))
        for name, q in score_synthesis(study, nets, image, label, seed=int(study.seed) + k).items():
            synthesis.setdefault(name, []).append(q)
        if scores.box.fallback:
            fallbacks.append(case_id)
    true_arr = np.array(true_rows, dtype=np.float64)
    pred_arr = {m: np.array(v, dtype=np.float64) for m, v in preds.items()}
    cv = study.out / "crossval" / DONE
    cv_info = json.loads(cv.read_text()) if cv.is_file() else {}
    cv_true = np.array([r["true_dsc"] for r in cv_records(study).values()], dtype=np.float64)
    seg_name = segmenter_name(study, segmenter)
    dropped = meta.get("tumours_dropped_by_resampling", [])
    sections = [
        segmenter_section(
            seg_name, {"test (final segmenter)": true_arr, "cross-validation (fold segmenters)": cv_true},
            study.class_names,
            notes=[f"true DSC on each case's own label grid (the prediction resampled onto it, nearest); resampling "
                   f"to the working grid ({list(study.spacing)} mm) left no tumour voxel in {len(dropped)} of "
                   f"{len(meta['cases'])} labelled case(s){' ' + str(dropped) if dropped else ''}."],
        ),
        synthesis_section(synthesis, study.class_names, "HU"),
        synthesis_use_section(pred_arr["SynthCP"], {a: pred_arr[a] for a in ABLATIONS}, study.class_names),
        feature_spread_section({m: np.stack(f) for m, f in features.items()}),
        pixel_section(maps, errors, f"inside the {list(study.roi_size)}-voxel ROI around the predicted pancreas"),
    ]
    notes = [
        f"segmenter: {seg_name}; settings: {study.settings_name}; {len(meta['train'])} training / {len(meta['test'])} "
        f"test cases (seeded split, seed {study.seed}, train fraction {study.train_fraction:.4f}); "
        f"{len(meta['folds'])}-fold cross-validation predictions ({cv_info.get('num_cases', '?')} cases) trained the "
        "comparators and regressors.",
        f"crop: {list(study.roi_size)} voxels around the bounding-box centre of the largest connected component of "
        "the predicted pancreas (labels > 0); "
        f"empty prediction -> volume centre: {len(fallbacks)} test case(s){' ' + str(fallbacks) if fallbacks else ''}.",
        f"spacing {list(study.spacing)} mm, HU window {list(study.hu_range)}, patch {list(study.patch_size)}, "
        f"MC-Dropout samples {study.mc_samples}; VAE alarm feature: {getattr(nets.vae_regressor, 'vae_feature', '?')}.",
        "a class absent from the segmentation is predicted DSC 0 by every method (exact where the DSC is defined).",
        "predicted volume (no image): a per-class linear map from the log of the predicted volume (mL) to the DSC, "
        "fitted on the cross-validated predictions — what the label map's size alone tells; a method that reads "
        "the image has to beat it.",
        f"pairwise Dice: the mean Dice over the pairs of {1 + len(nets.fold_segmenters)} segmentations (the judged one "
        "and each fold segmenter's), used as the predicted DSC without a fitted map (no pair of members is blind to a "
        "training case); 'SynthCP + pairwise Dice' is the mean of the two.",
        f"ablations: '{ABLATIONS[0]}' and '{ABLATIONS[1]}' feed SynthCP's trained comparator another x̂ than G(ŷ).",
    ]
    report = quality_report(
        pred_arr,
        true_arr,
        list(meta["test"]),
        list(study.class_names),
        out,
        groups={"tumour": ["tumour"], "pancreas": ["pancreas"]},
        title=f"Pancreas tumour DSC prediction (SynthCP Table 2) — segmenter: {seg_name}",
        quality_name="DSC",
        notes=notes,
        plot_classes=["tumour", "pancreas"],
        extra={"settings": study.describe(), "roi_fallback_cases": fallbacks,
               **{key: data for key, (_, data) in zip(("segmenter", "synthesis", "synthesis_use", "comparator_features", "pixel"), sections)}},
        sections=[markdown for markdown, _ in sections],
    )
    order = np.argsort(np.nan_to_num(true_arr[:, TUMOUR], nan=2.0), kind="stable")  # worst tumour DSC first
    picks = sorted({int(order[i]) for i in np.linspace(0, len(order) - 1, min(5, len(order))).round().astype(int)})
    figure = comparison_figure([panels[i] for i in picks], out / "comparison_examples.png",
                               title=f"SynthCP on test cases across the tumour DSC range ({seg_name})")
    print(report.markdown, flush=True)
    print(f"report: {report.files['markdown']} (+ .csv, .json); per-case: {report.files['per_case_csv']}; plots: "
          f"{out}/scatter_*.png, {figure}", flush=True)
    return {"tables": report.tables, "counts": report.counts, "report": str(report.files["markdown"])}


def _figure_panel(scores: CaseScores, label_roi: np.ndarray, case_id: str, true: np.ndarray) -> dict:
    """The axial slice of the ROI with the most tumour (ground truth or predicted; else pancreas) for the figure."""
    tumour = ((label_roi == TUMOUR) | (scores.pred_roi == TUMOUR)).sum(axis=(0, 1))
    z = int(np.argmax(tumour)) if tumour.any() else int(np.argmax((label_roi > 0).sum(axis=(0, 1))))
    q = scores.quality["SynthCP"]
    return {
        "image": scores.image_roi[..., z], "label": label_roi[..., z], "pred": scores.pred_roi[..., z],
        "synthesis": scores.synthesis[..., z], "painter": scores.painted[..., z],
        "error_prob": scores.error_maps["SynthCP"][..., z], "error": (label_roi != scores.pred_roi)[..., z],
        "caption": f"{case_id} z={z}\ntumour DSC true {fmt(true[TUMOUR], 3)} / SynthCP {fmt(q[TUMOUR], 3)}",
    }
# ================================================================================================================
# inference on a folder of new volumes
# ================================================================================================================
@study_stage(
    "inference", after=("train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_vae_alarm")
)
def inference(
    study: PancreasStudy,
    segmenter: Factory,
    generator: Factory,
    comparator: Factory,
    direct: Factory,
    mask_vae: Factory,
    input_dir: str | None = None,
    max_volumes: int | None = None,
) -> dict:
    """Segmentation + predicted DSC for every NIfTI volume of ``input_dir`` (default: the data set's ``imagesTs``).

    Writes ``inference/{case}_seg.nii.gz`` on the input's own grid (resampled by the affines, nearest: the alarm's
    way back) and ``inference/predicted_dsc.csv`` / ``.json`` (every method's predicted pancreas and tumour DSC).
    """
    folder = Path(input_dir) if input_dir else study.test_folder()
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))
    if max_volumes:
        files = files[: int(max_volumes)]
    nets = load_trained_models(study, segmenter, generator, comparator, direct, mask_vae)
    preprocess = study.preprocessing(label_key=None)
    out = study.stage_dir("inference")
    rows = []
    for path in tqdm(files, desc="inference", disable=not study.progress):
        case_id = path.name.split(".nii")[0]
        data = preprocess({"image": str(path)})
        image = data["image"]
        pred = segment_volume(study, nets.segmenter, image[0].numpy())
        case_scores = score_case(study, nets, image[0].numpy(), pred, seed=case_seed(study, case_id))
        scores, box = case_scores.quality, case_scores.box
        grid = nib.load(path)  # the input's own grid: only the header is read
        seg = to_native_grid(pred, affine_of(image), grid.affine, grid.shape[:3])
        save_like(seg, grid.affine, out / f"{case_id}_seg.nii.gz")
        row = {"case": case_id, "input": str(path), "roi_fallback": box.fallback}
        for m, q in scores.items():
            row[f"{m}|pancreas"] = float(q[PANCREAS])
            row[f"{m}|tumour"] = float(q[TUMOUR])
        rows.append(row)
    write_csv_rows(rows, out / "predicted_dsc.csv")
    atomic_save_json(rows, out / "predicted_dsc.json")
    print(f"inference: {len(rows)} volume(s) from {folder}; segmentations and predicted DSC in {out}", flush=True)
    return {"num_volumes": len(rows), "input_dir": str(folder)}
