"""Scoring the val split for the Cityscapes study's evaluate stage: load everything that judges one segmenter's
masks (``Judges``), then score every val image with every method through the core's scorer registry, streaming
the pixel-level metrics and collecting the image-level IoU predictions and the Fig. 5 rows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from synthcp2d.data.cityscapes import train_ids_to_color
from synthcp2d.studies.cityscapes.study import (
    IGNORE,
    IMAGE_METHODS,
    MODE_NAMES,
    REDUCTIONS,
    CityscapesStudy,
    area_feature,
    feature_channels,
    true_iou,
    vae_feature,
)
from synthcp2d.studies.common import Factory, image_tensor, load_cached, segment, synthesize
from synthcp2d.studies.figures import to_display_image
from synthcp2d.studies.measures import DatasetIoU
from synthcp3d.scoring.synthesis import X_HAT_ABLATIONS, replaced_syntheses
from synthcp3d.metrics import DEFAULT_MAX_BINS, StreamingPixelFailureMetrics
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.scoring import run_scorer
from synthcp3d.scoring.ensemble import pairwise_agreement
from synthcp3d.scoring.mc_dropout import (
    MCDropoutFullLinearRegressor,
    MCDropoutQualityRegressor,
    mean_entropy_per_class,
)
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.scoring.synthesis import ClassMeanPainter
from synthcp3d.targets import not_predicted_is_zero
from synthcp3d.utils.atomic import atomic_path
from synthcp3d.workflows.common import case_seed, require_file
from synthcp3d.workflows.trained import load_network

__all__ = ["Judges", "SegmenterScores", "load_judges", "score_segmenter"]


@dataclass
class Judges:
    """Everything that scores one segmenter's masks."""

    segmenter: torch.nn.Module
    comparators: dict[str, torch.nn.Module]  # Table-1 row name -> comparator
    confidnet: torch.nn.Module
    mc_regressor: Any
    mc_full: Any  # MC-Dropout's full linear map (the authors' release)
    vae_regressor: Any
    area_regressor: Any  # the label-only baseline: predicted area -> IoU
    fold_segmenters: list[torch.nn.Module]  # the cross-validation folds' (pairwise-IoU ensemble); may be empty


def load_judges(
    study: CityscapesStudy,
    name: str,
    comparator_source: str,
    segmenters: Mapping[str, Factory],
    comparators: Mapping[str, Factory],
    confidnet: Factory,
) -> Judges:
    """Segmenter ``name`` and its judges; the comparators are those trained on ``comparator_source``'s CV
    predictions (``name`` itself, or another segmenter for the cross-model row)."""
    seg = load_network(study, f"segmenter_{name}", "segmenter", "train_segmenter", segmenters[name])
    comps = {
        MODE_NAMES[mode]: load_network(
            study, f"comparator_{comparator_source}_{mode}", "comparator", "train_comparator", comparators[mode]
        )
        for mode in study.comparator_modes
    }
    head_factory = partial(confidnet, feature_channels=feature_channels(seg, study))
    head = load_network(study, f"confidnet_{name}", "confidnet", "train_baselines", head_factory)
    mc = MCDropoutQualityRegressor.from_state_dict(
        json.loads(require_file(study.models / f"mc_dropout_{name}.json", "crossval").read_text())
    )
    vr = LinearQualityRegressor.from_state_dict(
        json.loads(require_file(study.models / f"vae_alarm_{name}.json", "train_baselines").read_text())
    )
    folds = sorted(study.cv_dir(name).glob("fold_*/segmenter.pt"), key=lambda p: int(p.parent.name.split("_")[-1]))
    fold_nets = [
        load_network(study, f"segmenter_{name}", "segmenter", "crossval", segmenters[name], weights=path)
        for path in folds
    ]
    mc_full = MCDropoutFullLinearRegressor.from_state_dict(
        json.loads(require_file(study.models / f"mc_dropout_full_{name}.json", "crossval").read_text())
    )
    area = LinearQualityRegressor.from_state_dict(
        json.loads(require_file(study.models / f"area_{name}.json", "crossval").read_text())
    )
    return Judges(seg, comps, head, mc, mc_full, vr, area, fold_nets)


@dataclass
class SegmenterScores:
    """One segmenter's val split, scored: pixel tables by reduction (method -> metrics), image-level predictions by
    method ``(N, C)``, true IoU ``(N, C)``, the Fig. 5 rows and the segmenter's dataset-level IoU per class."""

    tables: dict
    preds: dict[str, np.ndarray]
    true: np.ndarray
    fig_rows: list
    class_iou: np.ndarray

    @property
    def miou(self) -> float:
        """Mean over the classes labelled or predicted in the split."""
        return float(np.nanmean(self.class_iou)) if np.isfinite(self.class_iou).any() else float("nan")


def _ablated_rows(comparators: Mapping[str, torch.nn.Module]) -> list[str]:
    """The x̂-ablation rows of the SynthCP comparators among ``comparators`` (Direct Prediction has no x̂)."""
    return [row + suffix for row in comparators if row != "Direct Prediction" for suffix in X_HAT_ABLATIONS]


def score_segmenter(
    study: CityscapesStudy,
    judges: Judges,
    generator: torch.nn.Module,
    painter: ClassMeanPainter,
    vae: torch.nn.Module,
    val: list,
    out: Any,
    baselines: bool,
    figure: bool,
    max_bins: int = DEFAULT_MAX_BINS,
) -> SegmenterScores:
    """Score every val image of one segmenter with every method, and SynthCP with ``x̂`` replaced by the painter's
    image of ``ŷ`` and by a blank image (``max_bins``: of the pooled pixel metrics)."""
    dev = study.torch_device
    compared = list(judges.comparators) + _ablated_rows(judges.comparators)
    methods = (["MSP", "MC-Dropout", "TCP"] if baselines else []) + compared
    meters = {
        (m, r): StreamingPixelFailureMetrics(r, max_bins=max_bins, device=dev)
        for m in methods
        for r in REDUCTIONS
    }
    pairwise = "Pairwise IoU (fold ensemble)"
    image_preds: dict[str, list[np.ndarray]] = {
        m: [] for m in IMAGE_METHODS
        if m in compared or (baselines and (m != pairwise or judges.fold_segmenters))
    }
    true_rows, fig_rows = [], []
    iou = DatasetIoU(study.num_classes, IGNORE)
    for k, item in enumerate(tqdm(val, desc=f"evaluate {out.name}", disable=not study.progress, unit="image")):
        case = load_cached(item["cache"])
        x = image_tensor(case["image"])[None].to(dev)
        label = torch.as_tensor(case["label"][0].astype(np.int64), device=dev)
        logits, _ = segment(judges.segmenter, x)
        probs = torch.softmax(logits.float(), dim=1)
        pred = probs.argmax(1)
        synth = synthesize(generator, pred, study.num_classes)
        ignore = label == IGNORE
        error = (pred[0] != label) & ~ignore
        true_rows.append(true_iou(pred[0], label, study.num_classes))
        iou.update(pred[0], label)
        inputs = {
            "segmenter": judges.segmenter,
            "image": x,
            "probs": probs,
            "logits": logits,
            "confidnet": judges.confidnet,
            "segmentation": one_hot_labels(pred, study.num_classes),
            "synthesis": synth,
            "mc_regressor": judges.mc_regressor,
        }
        maps: dict[str, torch.Tensor] = {}
        if baselines:
            maps["MSP"] = run_scorer("msp", inputs).pixel_error
            # the judged segmentation's class regions (those of the CV features), the image's own dropout masks
            mc = run_scorer("mc_dropout", inputs, samples=int(study.mc_samples), seed=case_seed(study, item["case"]))
            maps["MC-Dropout"] = mc.pixel_error
            maps["TCP"] = run_scorer("tcp", inputs).pixel_error
            image_preds["MC-Dropout"].append(mc.quality[0].cpu().numpy())
            entropy = mean_entropy_per_class(mc.pixel_error, pred, study.num_classes)  # as in crossval's features
            image_preds["MC-Dropout (full linear map)"].append(judges.mc_full.predict(entropy)[0].cpu().numpy())
            vae_q = judges.vae_regressor.predict(vae_feature(vae, pred[0], study)[None])
            image_preds["VAE alarm"].append(np.asarray(vae_q, dtype=np.float64)[0])
            area_q = judges.area_regressor.predict(area_feature(pred[0], study.num_classes)[None])
            image_preds["Predicted area (no image)"].append(np.asarray(area_q, dtype=np.float64)[0])
        if pairwise in image_preds:  # Zenk et al. 2025: mean pairwise IoU of the judged mask and the fold models'
            members = [pred] + [segment(net, x)[0].argmax(1) for net in judges.fold_segmenters]
            agreement = pairwise_agreement(members, study.num_classes, "iou")[0].cpu().numpy()
            image_preds[pairwise].append(not_predicted_is_zero(agreement, pred.cpu().numpy()))
        replaced = replaced_syntheses(painter, pred, synth, seed=int(study.seed) + k)
        for row, comparator in judges.comparators.items():
            # the registry names Direct Prediction's network "direct_comparator", SynthCP's "comparator"
            scorer, key = ("direct", "direct_comparator") if row == "Direct Prediction" else ("synthcp", "comparator")
            runs = {row: inputs} if row == "Direct Prediction" else {
                row: inputs, **{row + suffix: {**inputs, "synthesis": x_hat} for suffix, x_hat in replaced.items()}
            }
            for name, given in runs.items():
                result = run_scorer(scorer, {**given, key: comparator})
                maps[name] = result.pixel_error
                image_preds[name].append(result.quality[0].cpu().numpy())
        for m, s in maps.items():
            for r in REDUCTIONS:
                meters[(m, r)].update(s[0], error, ignore)
        if study.save_pixel_scores:
            with atomic_path(out / "scores" / f"{item['case']}.npz") as tmp, open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    error=error.cpu().numpy(),
                    pred=pred[0].to(torch.uint8).cpu().numpy(),
                    ignore=ignore.cpu().numpy(),
                    **{m: s[0].float().cpu().numpy() for m, s in maps.items()},
                )
        if figure and len(fig_rows) < study.figure_cases and "SynthCP-joint" in maps:
            fig_rows.append(_figure_row(case, pred, synth, error, ignore, maps["SynthCP-joint"]))
    tables = {r: {m: meters[(m, r)].compute() for m in methods} for r in REDUCTIONS}
    preds = {m: np.array(v, dtype=np.float64) for m, v in image_preds.items()}
    return SegmenterScores(tables, preds, np.array(true_rows, dtype=np.float64), fig_rows, iou.per_class())


def _figure_row(
    case: dict, pred: torch.Tensor, synth: torch.Tensor, error: torch.Tensor, ignore: torch.Tensor, joint: torch.Tensor
) -> list:
    """One Fig. 5 row: image, label, prediction, its synthesis, true errors, SynthCP-joint's predicted errors."""
    return [
        (to_display_image(case["image"]), "image", None, None),
        (train_ids_to_color(case["label"][0]), "label", None, None),
        (train_ids_to_color(pred[0].cpu().numpy()), "prediction", None, None),
        (to_display_image(synth[0].cpu().numpy()), "synthesized G(ŷ)", None, None),
        (np.where(ignore.cpu().numpy(), 0.5, error.float().cpu().numpy()), "true errors", "gray", (0.0, 1.0)),
        (
            joint[0].cpu().numpy(),
            "predicted errors (SynthCP-joint), true ones outlined",
            "gray",
            (0.0, 1.0),
            error.cpu().numpy(),
        ),
    ]
