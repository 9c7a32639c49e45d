"""Stages of the StreetHazards anomaly-segmentation study (SynthCP paper, Tables 3 and 4).

The bundle ``bundles/streethazards_anomaly_synthcp`` builds a :class:`StreetHazardsStudy` and the networks in
``configs/common.yaml``; each stage config calls one function below. Outputs below ``output_dir``:

- ``prepare``: check the folder, list train / test, cache every image resized to ``image_size``;
- ``train_segmenter``: the segmenter on the 13 known classes -> ``models/segmenter.pt``;
- ``train_synthesizer`` (``synthcp2d.studies.common``): 2D SPADE on ground-truth (label, image) pairs of the 13 known
  classes -> ``models/generator.pt``;
- ``train_autoencoder`` (``synthcp2d.studies.common``): the AE baseline's image auto-encoder ->
  ``models/autoencoder.pt``;
- ``evaluate``: every method scores every test pixel; Table 3 (SynthCP at ``t`` vs MSP, MSP+CRF, MC-Dropout, AE,
  max-logit, entropy) and Table 4 (SynthCP for every ``t`` of the sweep, one segmenter pass) in both reductions
  (``per_image``: the StreetHazards benchmark's; ``pooled``), streamed image by image; per-image score maps
  (``evaluate/scores/<case>.npz``) and per-image metrics (``evaluate/per_image.csv``) so the tables can be recomputed;
  a Fig. 7-like panel (``evaluate/fig7.png``).

Anomaly pixels (index 13) are positives; no pixel is ignored ("unlabeled" is an in-distribution class).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from synthcp2d.data.streethazards import (
    ANOMALY_INDEX,
    STREETHAZARDS_CLASSES,
    STREETHAZARDS_NUM_KNOWN_CLASSES,
    check_streethazards_folder,
    load_streethazards_datalist,
    load_streethazards_label,
    streethazards_to_color,
)
from synthcp2d.studies.common import (
    Factory,
    StreetStudy,
    cache_cases,
    fit_street_segmenter,
    image_tensor,
    load_cached,
    load_painter,
    segment,
    synthesize,
)
from synthcp2d.studies.figures import metrics_markdown, panel_figure, pooled_ranking_note, to_display_image
from synthcp2d.studies.measures import DatasetIoU, synthesis_per_case
from synthcp3d.scoring.synthesis import X_HAT_ABLATIONS, replaced_syntheses
from synthcp3d.evidence import synthesis_section
from synthcp3d.metrics import DEFAULT_MAX_BINS, StreamingAnomalyMetrics, binary_curve_metrics, check_max_bins
from synthcp3d.scoring import run_scorer, threshold_sweep
from synthcp3d.utils.atomic import atomic_path, atomic_save_json, atomic_save_text
from synthcp3d.workflows.common import case_seed, study_stage, write_csv_rows
from synthcp3d.workflows.trained import load_network, load_network_spec, save_network_spec

__all__ = [
    "StreetHazardsStudy",
    "BASELINES",
    "prepare",
    "train_segmenter",
    "evaluate",
]

logger = logging.getLogger(__name__)

#: Table 3 baseline rows -> registered scorer (``synthcp3d.scoring.SCORERS``).
BASELINES: dict[str, str] = {
    "MSP": "msp",
    "MSP+CRF": "msp_crf",  # the StreetHazards benchmark's: the softmax as the bilateral feature
    "MSP+CRF (image-guided)": "msp_crf",  # a named variant: the RGB image as the bilateral feature
    "MC-Dropout": "mc_dropout",
    "AE": "autoencoder",
    "Max-logit": "max_logit",
    "Entropy": "entropy",
}
#: the StreetHazards benchmark's CRF: one bilateral kernel with the softmax as its feature, no smoothness kernel
BENCHMARK_CRF = {"smooth_compat": 0.0, "bilateral_sxy": 10.0, "bilateral_schan": 13.0, "bilateral_compat": 10.0}
ANOMALY_COLUMNS = (("FPR95", "FPR95 ↓"), ("AUROC", "AUROC ↑"), ("AUPR", "AUPR ↑"))
#: the known classes given their own column in the synthesis-quality section (all 13 are in its mean)
SHOWN_CLASSES = ("road", "building", "vegetation", "car", "sidewalk")
REDUCTIONS = ("per_image", "pooled")


@dataclass
class StreetHazardsStudy(StreetStudy):
    """Settings of the StreetHazards study (``configs/common.yaml``); see `StreetStudy` for the shared ones.

    Attributes:
        t: SynthCP's MSP post-processing threshold of Table 3 (paper: 0.999).
        thresholds: Table 4's sweep, all from one segmenter pass per image.
        scales: multi-scale test factors of SynthCP (paper option; ``(1.0,)`` = single scale).
        mc_samples: MC-Dropout passes (paper: 50).
        crf_backend: the dense CRF of both MSP+CRF rows (``"torch"``: ours; ``"pydensecrf"`` if installed).
        crf_iterations: mean-field iterations of "MSP+CRF", the StreetHazards benchmark's (Hendrycks et al.,
            ``eval_ood.py``: one bilateral kernel on the softmax, sxy 10, schan 13, compat 10; 100 iterations).
        crf_image_iterations: those of "MSP+CRF (image-guided)" (smoothness + bilateral kernel on the image).
        save_pixel_scores: write every method's score map per test image (``evaluate/scores``).
        figure_cases: test images shown in the Fig. 7 panel.
    """

    t: float = 0.999
    thresholds: Sequence[float] = (0.8, 0.9, 0.99, 0.999, 1.0)
    scales: Sequence[float] = (1.0,)
    mc_samples: int = 50
    crf_backend: str = "torch"
    crf_iterations: int = 100
    crf_image_iterations: int = 5
    save_pixel_scores: bool = True
    figure_cases: int = 3

    stage_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {
        field: ("evaluate",)
        for field in (
            "t", "thresholds", "scales", "mc_samples", "crf_backend", "crf_iterations", "crf_image_iterations",
            "save_pixel_scores", "figure_cases", "settings_name",
        )
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.thresholds = tuple(float(t) for t in self.thresholds)
        self.scales = tuple(float(s) for s in self.scales)
        if float(self.t) not in self.thresholds:
            self.thresholds = tuple(sorted({*self.thresholds, float(self.t)}))

    @property
    def num_classes(self) -> int:
        return STREETHAZARDS_NUM_KNOWN_CLASSES


def _read_label(path: str) -> np.ndarray:
    return load_streethazards_label(path, allow_anomaly=True)


# ================================================================================================================
@study_stage("prepare")
def prepare(study: StreetHazardsStudy) -> dict:
    """Check the StreetHazards folder, list the train and test splits, cache every image at ``image_size``.

    Writes ``prepare/cases.json`` = ``{"train": [records], "test": [records]}`` (record: ``case``, ``image``,
    ``label``, ``town``, ``cache``) and ``prepare/cache/{split}/*.npz``.
    """
    summary = check_streethazards_folder(study.dataset_dir, splits=["train", "test"], deep=False)
    out = study.stage_dir("prepare")
    record: dict[str, Any] = {}
    for split in ("train", "test"):
        items = load_streethazards_datalist(study.dataset_dir, split)
        if study.max_cases:
            items = items[: int(study.max_cases)]
        items = [{**i, "case": i["name"]} for i in items]
        record[split] = cache_cases(items, out / "cache" / split, study.image_size, _read_label, study.progress)
    atomic_save_json(record, out / "cases.json")
    return {"num_train": len(record["train"]), "num_test": len(record["test"]), "image_sizes": summary["image_sizes"]}


@study_stage("train_segmenter", training=True, after=("prepare",))
def train_segmenter(
    study: StreetHazardsStudy,
    segmenter: Factory,
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
) -> dict:
    """The segmenter on the 13 known classes of the training split -> ``models/segmenter.pt`` (``recipe``: the
    core's `SegmenterRecipe`; ``flip_prob``: the images' random horizontal flip)."""
    train = study.cases()["train"]
    fit_street_segmenter(
        study, segmenter, train, study.stage_dir("train_segmenter") / "checkpoints", study.models / "segmenter.pt",
        iterations, batch_size, lr, seed=int(study.seed), recipe=recipe, flip_prob=flip_prob,
    )
    save_network_spec(study, "segmenter", segmenter)
    return {"num_train": len(train), "iterations": int(iterations)}


# ================================================================================================================
def synthcp_name(t: float) -> str:
    """Table 4 row name of SynthCP at threshold ``t``."""
    return f"SynthCP (t={t:g})"


@study_stage("evaluate", after=("prepare", "train_segmenter", "train_synthesizer", "train_autoencoder"))
def evaluate(
    study: StreetHazardsStudy,
    segmenter: Factory,
    generator: Factory,
    autoencoder: Factory,
    pooled_max_bins: int = DEFAULT_MAX_BINS,
) -> dict:
    """Tables 3 and 4 on the test split, both reductions, streamed one image at a time (``pooled_max_bins``: the
    distinct scores each pooled row ranks exactly, see `StreamingBinaryCurve`).

    With them: SynthCP at ``t`` with ``x̂`` replaced by the class-mean painter's image of ``ŷ`` and by a blank image
    (Table 3 rows), the synthesis quality of ``G(y)`` against the painter on the test images, and the segmenter's
    test mIoU over the 13 known classes (anomaly pixels excluded) in the tables' headings.

    Writes ``evaluate/report.{md,json,csv}``, ``evaluate/per_image.csv`` (every method's FPR95 / AUROC / AUPR on each
    image with an anomaly), ``evaluate/scores/<case>.npz`` (score maps; with ``save_pixel_scores``) and
    ``evaluate/fig7.png``.
    """
    max_bins = check_max_bins(pooled_max_bins, "pooled_max_bins")
    dev = study.torch_device
    seg = load_network(study, "segmenter", "segmenter", "train_segmenter", segmenter)
    gen = load_network(study, "generator", "generator", "train_synthesizer", generator)
    painter = load_painter(study)
    ae = load_network(study, "autoencoder", "autoencoder", "train_autoencoder", autoencoder)
    test = study.cases()["test"]
    ablated = [synthcp_name(study.t) + suffix for suffix in X_HAT_ABLATIONS]
    methods = [synthcp_name(t) for t in study.thresholds] + ablated + list(BASELINES)
    meters = {
        (m, r): StreamingAnomalyMetrics(r, max_bins=max_bins, device=dev)
        for m in methods
        for r in REDUCTIONS
    }
    options = {
        "MC-Dropout": {"samples": int(study.mc_samples)},
        "MSP+CRF": {"backend": study.crf_backend, "iterations": int(study.crf_iterations), **BENCHMARK_CRF},
        "MSP+CRF (image-guided)": {"backend": study.crf_backend, "iterations": int(study.crf_image_iterations)},
    }
    out = study.stage_dir("evaluate")
    per_image_rows: list[dict[str, Any]] = []
    figure_rows = []
    iou = DatasetIoU(study.num_classes, ignore_index=ANOMALY_INDEX)
    for k, item in enumerate(tqdm(test, desc="evaluate", disable=not study.progress, unit="image")):
        case = load_cached(item["cache"])
        x = image_tensor(case["image"])[None].to(dev)
        label = torch.as_tensor(case["label"][0].astype(np.int64), device=dev)[None]
        is_anomaly = label == ANOMALY_INDEX
        logits, _ = segment(seg, x)
        probs = torch.softmax(logits.float(), dim=1)
        pred = probs.argmax(1)
        synth = synthesize(gen, pred, study.num_classes)
        iou.update(pred[0], label[0])
        scores = {synthcp_name(t): s for t, s in threshold_sweep(seg, x, synth, study.thresholds, study.scales).items()}
        for suffix, x_hat in replaced_syntheses(painter, pred, synth, seed=int(study.seed) + k).items():
            scores[synthcp_name(study.t) + suffix] = threshold_sweep(seg, x, x_hat, [study.t], study.scales)[study.t]
        inputs = {"segmenter": seg, "image": x, "probs": probs, "logits": logits, "autoencoder": ae}
        for method, scorer in BASELINES.items():
            given = {k: v for k, v in inputs.items() if not (method == "MSP+CRF" and k == "image")}  # softmax-guided
            seeded = {"seed": case_seed(study, item["case"])} if method == "MC-Dropout" else {}  # its own masks
            scores[method] = run_scorer(scorer, given, **options.get(method, {}), **seeded).anomaly
        row: dict[str, Any] = {"case": item["case"], "anomaly_pixels": int(is_anomaly.sum())}
        for method, score in scores.items():
            meters[(method, "per_image")].update(score[0], is_anomaly[0])
            meters[(method, "pooled")].update(score[0], is_anomaly[0])
            if 0 < row["anomaly_pixels"] < is_anomaly.numel():
                single = binary_curve_metrics(score[0].cpu().numpy(), is_anomaly[0].cpu().numpy())
                for key in ("FPR95", "AUROC", "AUPR"):
                    row[f"{method}|{key}"] = single[key]
        if 0 < row["anomaly_pixels"] < is_anomaly.numel():
            per_image_rows.append(row)
        if study.save_pixel_scores:
            path = out / "scores" / f"{item['case'].replace('/', '_')}.npz"
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    is_anomaly=is_anomaly[0].cpu().numpy(),
                    pred=pred[0].to(torch.uint8).cpu().numpy(),
                    **{m: s[0].float().cpu().numpy() for m, s in scores.items()},
                )
        if len(figure_rows) < study.figure_cases and row["anomaly_pixels"] > 0:
            figure_rows.append(_figure_row(case, pred[0], synth[0], scores, study.t))
    tables = {r: {m: meters[(m, r)].compute() for m in methods} for r in REDUCTIONS}
    write_csv_rows(per_image_rows, out / "per_image.csv")
    if figure_rows:
        panel_figure(figure_rows, out / "fig7.png", title="StreetHazards: SynthCP anomaly segmentation (cf. Fig. 7)")
    known = list(STREETHAZARDS_CLASSES[: study.num_classes])
    synthesis = synthesis_section(
        synthesis_per_case(study, gen, painter, test, known, ANOMALY_INDEX), known, "levels", shown=SHOWN_CLASSES,
        where=f"the {len(test)} test images' ground-truth label maps (anomaly pixels: no class; levels: colour values "
        "0-255)",
        element="pixel", average=True,
    )
    segmenter_name = str(load_network_spec(study.models, "segmenter", "train_segmenter").get("name", "segmenter"))
    report = _write_report(study, tables, test, per_image_rows, iou.per_class(), synthesis, out, segmenter_name)
    print(report, flush=True)
    print(
        f"report: {out / 'report.md'} (+ .json, .csv); per-image: {out / 'per_image.csv'}; figure: {out / 'fig7.png'}"
    )
    return {"tables": tables, "report": str(out / "report.md")}


def _figure_row(case: dict, pred: torch.Tensor, synth: torch.Tensor, scores: dict, t: float) -> list:
    label = case["label"][0]
    anomaly = label == ANOMALY_INDEX  # outlined on the score maps
    return [
        (to_display_image(case["image"]), "image", None, None),
        (streethazards_to_color(label), "label (anomaly cyan)", None, None),
        (streethazards_to_color(pred.cpu().numpy()), "prediction", None, None),
        (to_display_image(synth.cpu().numpy()), "synthesized G(ŷ)", None, None),
        (scores[synthcp_name(t)][0].cpu().numpy(), f"SynthCP (t={t:g}), anomaly outlined", "inferno", None, anomaly),
        (scores["MSP"][0].cpu().numpy(), "MSP, anomaly outlined", "inferno", None, anomaly),
    ]


def _write_report(
    study: StreetHazardsStudy, tables: dict, test: list, per_image_rows: list, class_iou: np.ndarray,
    synthesis: tuple, out: Any, segmenter_name: str,
) -> str:
    main_rows = [synthcp_name(study.t)] + [synthcp_name(study.t) + s for s in X_HAT_ABLATIONS] + list(BASELINES)
    n_anom = len(per_image_rows)
    miou = float(np.nanmean(class_iou)) if np.isfinite(class_iou).any() else float("nan")
    lines = [
        "# StreetHazards anomaly segmentation (SynthCP Tables 3 and 4)",
        "",
        f"settings: {study.settings_name}; {len(test)} test images ({n_anom} with anomaly and in-distribution pixels), "
        f"image size {list(study.image_size)}, MC-Dropout samples {study.mc_samples}, MSP+CRF backend "
        f"'{study.crf_backend}' (the benchmark's, on the softmax: {study.crf_iterations} mean-field iterations; "
        f"image-guided: {study.crf_image_iterations}), SynthCP scales {list(study.scales)}.",
        "All values ×100; anomaly pixels positive; no pixel ignored.",
        f"Segmenter ({segmenter_name}) test mIoU {miou:.3f}: dataset-level IoU over the {study.num_classes} known "
        "classes (intersections and unions summed over the test images, anomaly pixels excluded), averaged over the "
        "classes labelled or predicted there.",
        f"Rows '{synthcp_name(study.t)}, x̂ = class-mean painter' and '…, x̂ = blank': the same score with the "
        "class-mean painter's image of ŷ (training mean colour per class plus noise of its training SD) or a blank "
        "mid-grey image in place of G(ŷ).",
        "",
    ]
    for reduction in REDUCTIONS:
        note = (
            "per-image metrics averaged over the images holding both anomaly and in-distribution pixels "
            "(StreetHazards benchmark)"
            if reduction == "per_image"
            else f"all test pixels pooled, Fishyscapes / SMIYC style; {pooled_ranking_note(tables['pooled'])}"
        )
        lines += [f"## Table 3 — reduction `{reduction}`: {note} ({segmenter_name} segmenter mIoU {miou:.3f})", ""]
        lines += [metrics_markdown({m: tables[reduction][m] for m in main_rows}, ANOMALY_COLUMNS), ""]
    lines += [f"## Table 4 — SynthCP MSP post-processing threshold sweep (reduction `per_image`; {segmenter_name} "
              f"segmenter mIoU {miou:.3f})", ""]
    lines += [
        metrics_markdown(
            {synthcp_name(t): tables["per_image"][synthcp_name(t)] for t in study.thresholds}, ANOMALY_COLUMNS
        ),
        "",
        synthesis[0],
        "",
    ]
    markdown = "\n".join(lines)
    atomic_save_text(markdown, out / "report.md")
    known = STREETHAZARDS_CLASSES[: study.num_classes]
    atomic_save_json(
        {"tables": tables, "settings": study.describe(), "num_test": len(test), "num_images_with_anomaly": n_anom,
         "segmenter": segmenter_name, "segmenter_miou": miou,
         "segmenter_class_iou": dict(zip(known, class_iou.tolist())),
         "synthesis": synthesis[1]},
        out / "report.json",
    )
    rows = [
        {"reduction": r, "method": m, **{k: tables[r][m].get(k) for k, _ in ANOMALY_COLUMNS}}
        for r in REDUCTIONS
        for m in tables[r]
    ]
    write_csv_rows(rows, out / "report.csv")
    return markdown
