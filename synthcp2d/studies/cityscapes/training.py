"""The Cityscapes study's preparation and training stages: ``prepare`` (cache, folds), ``train_segmenter``,
``crossval`` (+ the MC-Dropout regressors), ``train_comparator`` and ``train_baselines`` (TCP, VAE alarm).
``train_synthesizer`` is shared with StreetHazards (``synthcp2d.studies.common``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from synthcp2d.data.cityscapes import check_cityscapes_folder, load_cityscapes_datalist, load_label_train_ids
from synthcp2d.studies.cityscapes.study import (
    IGNORE,
    CityscapesStudy,
    area_feature,
    cv_records,
    feature_channels,
    segmenter_factories,
    true_iou,
    vae_input,
)
from synthcp2d.studies.common import (
    Factory,
    cache_cases,
    case_dataset,
    fit_confidnet,
    fit_street_segmenter,
    image_tensor,
    load_cached,
    segment,
)
from synthcp3d.engines.crossval import load_prediction, make_folds, run_crossval
from synthcp3d.scoring.mc_dropout import MCDropoutFullLinearRegressor
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import (
    case_seed,
    nanmean,
    on_main_process,
    study_stage,
)
from synthcp3d.workflows.protocol import fit_comparator, fit_mask_vae, fold_seed
from synthcp3d.workflows.protocol_judges import fit_cv_regressors, fit_vae_alarm_regressor, mc_dropout_feature
from synthcp3d.workflows.trained import load_network, save_network_spec

__all__ = ["crossval", "prepare", "train_baselines", "train_comparator", "train_segmenter"]

logger = logging.getLogger(__name__)


@study_stage("prepare")
def prepare(study: CityscapesStudy) -> dict:
    """Check the Cityscapes folder, cache train / val at ``image_size``, make the K folds of the training split.

    Writes ``prepare/cases.json`` = ``{"train": [records], "val": [records], "folds": [[case, ...], ...]}``.
    """
    summary = check_cityscapes_folder(study.dataset_dir, splits=["train", "val"], deep=False)
    out = study.stage_dir("prepare")
    record: dict[str, Any] = {}
    for split in ("train", "val"):
        items = load_cityscapes_datalist(study.dataset_dir, split)
        if study.max_cases:
            items = items[: int(study.max_cases)]
        items = [{**i, "case": i["name"]} for i in items]
        record[split] = cache_cases(
            items, out / "cache" / split, study.image_size, load_label_train_ids, study.progress
        )
    ids = [r["case"] for r in record["train"]]
    cities = [r["city"] for r in record["train"]]
    contiguous = study.fold_split == "city"
    record["folds"] = make_folds(
        ids, k=int(study.num_folds), seed=int(study.seed), groups=cities, contiguous=contiguous
    )
    atomic_save_json(record, out / "cases.json")
    info = {
        "num_train": len(ids),
        "num_val": len(record["val"]),
        "num_folds": int(study.num_folds),
        "fold_split": study.fold_split,
        "fold_sizes": [len(f) for f in record["folds"]],
        "image_sizes": summary["image_sizes"],
    }
    return info


@study_stage("train_segmenter", training=True, after=("prepare",))
def train_segmenter(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
) -> dict:
    """Every segmenter on the whole training split -> ``models/segmenter_<name>.pt`` (finished ones are kept;
    ``recipe``: the core's `SegmenterRecipe`; ``flip_prob``: the images' random horizontal flip)."""
    train = study.cases()["train"]
    for name, factory in segmenter_factories(segmenters, study).items():
        fit_street_segmenter(
            study, factory, train, study.stage_dir("train_segmenter") / f"checkpoints_{name}",
            study.models / f"segmenter_{name}.pt", iterations, batch_size, lr, seed=int(study.seed), recipe=recipe,
            flip_prob=flip_prob,
        )
        save_network_spec(study, f"segmenter_{name}", factory)
    return {"num_train": len(train), "iterations": int(iterations)}


@study_stage("crossval", training=True, after=("prepare",))
def crossval(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
) -> dict:
    """K-fold CV predictions of every segmenter on the training split (the comparators' training data); the folds
    train as `train_segmenter` does (``recipe``, ``flip_prob``: the same meaning).

    Per segmenter ``name``: the core's `run_crossval` layout in ``crossval/<name>/`` (PNG label maps, each case's
    MC-Dropout feature in its record), then ``crossval/<name>/cases.json`` (per case: fold, prediction path, true
    per-class IoU, MC-Dropout feature) and the MC-Dropout regressors fitted on them -> ``models/mc_dropout_<name>.json``.
    Finished folds are skipped.
    """
    meta = study.cases()
    info: dict[str, Any] = {"num_folds": len(meta["folds"]), "iterations": int(iterations), "cv_mean_iou": {}}
    for name, factory in segmenter_factories(segmenters, study).items():

        def train_fold(cases: list[dict], fold_dir: Path, factory: Factory = factory) -> torch.nn.Module:
            return fit_street_segmenter(
                study, factory, cases, fold_dir / "checkpoints", fold_dir / "segmenter.pt", iterations, batch_size,
                lr, seed=fold_seed(study, fold_dir), recipe=recipe, flip_prob=flip_prob,
            )

        manifest = run_crossval(
            meta["train"], len(meta["folds"]), study.cv_dir(name), train_fold, partial(_predict_case, study),
            seed=int(study.seed), folds=meta["folds"], pred_format="png", progress=study.progress,
            restart=bool(study.force),
        )
        on_main_process(_cv_summary, study, name, manifest, info)
    return info


def _predict_case(study: CityscapesStudy, net: torch.nn.Module, case: Mapping) -> dict:
    """A fold's segmenter on one held-out image: the label map, its MC-Dropout and predicted-area features."""
    x = image_tensor(load_cached(case["cache"])["image"])[None].to(study.torch_device)
    pred = segment(net, x)[0].argmax(1)
    feature, _ = mc_dropout_feature(net, x, pred, study.num_classes, study.mc_samples, case_seed(study, case["case"]))
    record = {"mc_feature": feature.tolist(), "area_feature": area_feature(pred[0], study.num_classes).tolist()}
    return {"pred": pred[0].to(torch.uint8).cpu().numpy(), "record": record}


def _cv_summary(study: CityscapesStudy, name: str, manifest: list[dict], info: dict[str, Any]) -> None:
    """Segmenter ``name``'s CV records -> ``crossval/<name>/cases.json``, its MC-Dropout regressors ->
    ``models/mc_dropout_<name>.json`` (per class) and ``models/mc_dropout_full_<name>.json`` (the authors'
    release's full linear map), and the label-only baseline's -> ``models/area_<name>.json``; its figures added to
    the stage's ``info``."""
    out = study.cv_dir(name)
    cache = {r["case"]: r["cache"] for r in study.cases()["train"]}
    records = {}
    for entry in manifest:
        case = entry["case"]
        pred_path = str(out / entry["pred"])
        label = torch.as_tensor(load_cached(cache[case])["label"][0].astype(np.int64))
        pred = torch.as_tensor(load_prediction(pred_path).astype(np.int64))
        records[case] = {
            "fold": entry["fold"],
            "cache": cache[case],
            "pred": pred_path,
            "true_iou": true_iou(pred, label, study.num_classes).tolist(),
            "mc_feature": entry["record"]["mc_feature"],
            "area_feature": entry["record"]["area_feature"],
        }
    atomic_save_json(records, out / "cases.json")
    true = np.array([r["true_iou"] for r in records.values()], dtype=np.float64)
    feats = np.array([r["mc_feature"] for r in records.values()], dtype=np.float64)
    areas = np.array([r["area_feature"] for r in records.values()], dtype=np.float64)
    unfit = fit_cv_regressors(
        study.num_classes, true, feats, areas, study.models / f"mc_dropout_{name}.json",
        study.models / f"area_{name}.json",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = MCDropoutFullLinearRegressor(study.num_classes).fit(feats, true)
    for k in np.flatnonzero(np.isnan(full.intercept)):  # a class whose IoU is never defined in CV: predict 0
        full.coef[k], full.intercept[k] = 0.0, 0.0
    atomic_save_json(full.state_dict(), study.models / f"mc_dropout_full_{name}.json")
    info.setdefault("mc_dropout_unfit_classes", {})[name] = unfit
    info["cv_mean_iou"][name] = nanmean(np.nanmean(true, axis=0))


@study_stage("train_comparator", training=True, after=("prepare", "crossval", "train_synthesizer"))
def train_comparator(
    study: CityscapesStudy,
    comparators: Mapping[str, Factory],
    generator: Factory,
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    quality_loss: str = "l1",
    optimizer: str = "adamw",
    quality_weight: float = 1.0,
    error_weight: float = 1.0,
    flip_prob: float = 0.5,
) -> dict:
    """Per segmenter and mode: the comparator on ``(x, G(ŷ), ŷ)`` (``direct``: ``(x, ŷ)``) of the CV predictions,
    IoU + error-map targets (paper eq. 8; ``quality_loss``: ``"l1"`` as published or ``"bce"``; ``quality_weight``,
    ``error_weight``: the two terms' weights, 1 and 1 in the paper; ``optimizer``: see `comparator_optimizer`) ->
    ``models/comparator_<segmenter>_<mode>.pt``. Same data, schedule and seed for every mode: Direct Prediction is
    the ablation without synthesis. ``flip_prob``: the training images' random horizontal flip."""
    g = load_network(study, "generator", "generator", "train_synthesizer", generator)
    out = study.stage_dir("train_comparator")
    for name in study.segmenters:
        dataset = case_dataset(list(cv_records(study, name).values()), flip_prob, with_pred=True)
        for mode in study.comparator_modes:
            logger.info(f"comparator {mode} on the CV predictions of {name}")
            fit_comparator(
                study, f"comparator_{name}_{mode}", comparators[mode], dataset, g, out / f"checkpoints_{name}_{mode}",
                iterations, batch_size, lr, weight_decay, metric="iou", ignore_index=IGNORE, quality_loss=quality_loss,
                optimizer=optimizer, quality_weight=quality_weight, error_weight=error_weight,
            )
    return {"iterations": int(iterations), "modes": list(study.comparator_modes), "quality_loss": quality_loss,
            "optimizer": optimizer}


@study_stage("train_baselines", training=True, after=("prepare", "train_segmenter", "crossval"))
def train_baselines(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    confidnet: Factory,
    mask_vae: Factory,
    iterations: int = 10000,
    batch_size: int = 8,
    lr: float = 1e-4,
    vae_beta: float = 1e-3,
    vae_lr: float = 1e-3,
    vae_iterations: int | None = None,
    vae_batch_size: int | None = None,
    flip_prob: float = 0.5,
) -> dict:
    """TCP heads (``models/confidnet_<name>.pt``) and the VAE alarm (``models/mask_vae.pt`` on ground-truth label maps,
    then per segmenter a linear per-class regressor from the VAE loss to IoU on its CV predictions ->
    ``models/vae_alarm_<name>.json``).

    ``iterations``, ``batch_size``, ``lr``, ``flip_prob`` (random horizontal flip): the TCP heads'; ``vae_iterations``,
    ``vae_batch_size`` (``None``: the TCP heads' ``iterations``, ``batch_size``), ``vae_lr``, ``vae_beta``: the mask
    VAE's."""
    out = study.stage_dir("train_baselines")
    train = study.cases()["train"]
    for name, factory in segmenter_factories(segmenters, study).items():
        seg = load_network(study, f"segmenter_{name}", "segmenter", "train_segmenter", factory)
        head = partial(confidnet, feature_channels=feature_channels(seg, study))  # width from the segmenter
        fit_confidnet(
            study,
            seg,
            head,
            train,
            out / f"checkpoints_tcp_{name}",
            f"confidnet_{name}",
            iterations,
            batch_size,
            lr,
            flip_prob=flip_prob,
        )

    def masks() -> Dataset:
        labels = (torch.as_tensor(load_cached(r["cache"])["label"].astype(np.int64)) for r in train)
        return Dataset([{"label": vae_input(label, study)[0].argmax(0, keepdim=True)} for label in labels])

    vae_iterations = iterations if vae_iterations is None else vae_iterations
    vae_batch_size = batch_size if vae_batch_size is None else vae_batch_size
    vae = fit_mask_vae(
        study, mask_vae, masks, out / "checkpoints_vae", vae_iterations, vae_batch_size, vae_lr, vae_beta
    )
    on_main_process(_fit_vae_regressors, study, vae)
    return {"iterations": int(iterations), "num_train": len(train)}


def _fit_vae_regressors(study: CityscapesStudy, vae: torch.nn.Module) -> None:
    """Per segmenter: the VAE loss of its CV predictions -> IoU, a per-class linear regressor ->
    ``models/vae_alarm_<name>.json``."""
    for name in study.segmenters:
        records = cv_records(study, name)
        preds = (torch.as_tensor(load_prediction(r["pred"]).astype(np.int64)) for r in records.values())
        masks = (vae_input(pred[None].to(study.torch_device), study) for pred in preds)
        true = np.array([r["true_iou"] for r in records.values()], dtype=np.float64)
        fit_vae_alarm_regressor(study, vae, masks, true, study.models / f"vae_alarm_{name}.json")
