"""Stages of the 3D flagship study: MSD pancreas tumour DSC prediction (SynthCP paper, Table 2).

The bundle ``bundles/pancreas_ct_synthcp`` builds a :class:`PancreasStudy` (shared settings) and the networks
(``_target_`` factories) in ``configs/common.yaml``; each stage config calls one stage function (modules: see
the end). Outputs, all below ``output_dir`` (see the bundle README for the full layout):

- ``prepare``: seeded split (``train_fraction`` of the labelled cases for training, paper: 200 of 281), the K folds
  of the training part, every case resampled/windowed once (``prepare/volumes``);
- ``train_segmenter``: AH-Net on all training cases -> ``models/segmenter.pt``;
- ``crossval``: K AH-Nets, each predicts its held-out fold (every training case exactly once; the core's
  `run_crossval` layout) -> ``crossval/predictions``, ``crossval/cases.json`` (true DSC, ROI, MC-Dropout and
  predicted-volume features), and the regressors fitted on them -> ``models/mc_dropout_regressor.json``,
  ``models/volume_regressor.json``;
- ``train_synthesizer``: 3D SPADE on ground-truth (label, image) pancreas-ROI pairs -> ``models/generator.pt``;
- ``train_comparator``: SynthCP comparator (``x``, ``G(ŷ)``, ``ŷ``) and Direct Prediction (``x``, ``ŷ``) on the
  cross-validated predictions -> ``models/comparator_synthcp.pt``, ``models/comparator_direct.pt``;
- ``train_vae_alarm``: mask VAE on ground-truth masks (tight crop), then its loss value (``feature``) on the CV
  predictions regressed onto the true DSC -> ``models/mask_vae.pt``, ``models/vae_alarm_regressor.json``;
- ``evaluate``: the final segmenter predicts the test cases; every method predicts their DSC; Table-2 report;
- ``inference``: segmentation + predicted DSC for a folder of new volumes.

Crop rule (``synthcp3d.roi``): a fixed ``roi_size`` box centred on the bounding box of the predicted pancreas
(the largest connected component of labels > 0 of ``ŷ``), shifted to stay inside the volume; an empty prediction falls back to the volume
centre (counted in the report). Undefined DSC (tumour absent from both ground truth and prediction) is NaN: excluded from
the metrics and counted. True DSC (reports, regressors) is computed on each case's own label grid (``native_dsc``);
the comparator is trained on the DSC inside its ROI on the working grid (the two differ by predictions outside the
ROI and by the resampling).

Modules: this one (``prepare``, ``train_segmenter``, ``crossval``),
:mod:`synthcp3d.workflows.pancreas_judges` (``train_synthesizer``, ``train_comparator``, ``train_vae_alarm``) and
:mod:`synthcp3d.workflows.pancreas_report` (``evaluate``, ``inference``). The trained model these stages write
(settings, networks, regressors) is :mod:`synthcp3d.workflows.pancreas_model`, and the per-case scoring that
``evaluate`` and ``inference`` share with the DSC alarm is :mod:`synthcp3d.workflows.pancreas_scoring`: neither holds
training code or imports a stage module. The training bodies are the core's, shared with the 2D studies
(:mod:`synthcp3d.workflows.protocol`): these stages only say what the pancreas study trains on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose
from tqdm.auto import tqdm

from synthcp3d.data.msd import check_msd_folder, load_msd_datalist
from synthcp3d.data.volume_io import save_like
from synthcp3d.engines.crossval import make_folds, run_crossval
from synthcp3d.errors import SynthCPInputError
from synthcp3d.evidence import quality_spread
from synthcp3d.transforms import load_preprocessed, segmenter_train_augmentation
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import (
    case_seed,
    nanmean,
    on_main_process,
    require_file,
    study_stage,
)
from synthcp3d.workflows.pancreas_model import Factory, PancreasStudy, TUMOUR, load_volume, save_settings
from synthcp3d.workflows.pancreas_scoring import (
    SlidingWindowNet,
    native_dsc,
    roi_tensors,
    segment_volume,
    volume_feature,
)
from synthcp3d.workflows.protocol import SegmenterRecipe, fit_segmenter, fold_seed
from synthcp3d.workflows.protocol_judges import fit_cv_regressors, mc_dropout_feature
from synthcp3d.workflows.trained import save_network_spec

__all__ = ["prepare", "train_segmenter", "crossval", "cv_records"]  # stages in order, and what they leave

logger = logging.getLogger(__name__)


def _make_folds(case_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    return [list(f) for f in make_folds(list(case_ids), k=k, seed=seed)]


# ================================================================================================================
# prepare
# ================================================================================================================
@study_stage("prepare")
def prepare(study: PancreasStudy) -> dict:
    """Check the data folder, split it (seeded), make the folds, preprocess every labelled case once.

    Writes ``prepare/cases.json`` = ``{"train": [...], "test": [...], "folds": [[...], ...], "cases": {case:
    {"image", "label", "source_image", "source_label", "shape"}}}``, ``prepare/volumes/{case}_{image,label}.nii.gz``
    and ``models/settings.json`` (:func:`save_settings`).
    """
    check_msd_folder(study.dataset_dir, task=study.task)
    datalist = load_msd_datalist(study.dataset_dir, task=study.task, section="training")
    if study.max_cases:
        datalist = datalist[: int(study.max_cases)]
    if len(datalist) < 2 * study.num_folds:
        raise SynthCPInputError(
            f"{study.dataset_dir} has {len(datalist)} labelled cases: too few for {study.num_folds} folds and a test split"
        )
    names = [d["case"] for d in datalist]
    rng = np.random.default_rng(int(study.seed))
    order = rng.permutation(len(names))
    n_train = int(round(len(names) * float(study.train_fraction)))
    n_train = min(max(n_train, study.num_folds), len(names) - 1)
    train = sorted(names[i] for i in order[:n_train])
    test = sorted(names[i] for i in order[n_train:])
    folds = _make_folds(train, int(study.num_folds), int(study.seed))

    out = study.stage_dir("prepare") / "volumes"
    preprocess = study.preprocessing()
    cases: dict[str, dict] = {}
    for item in tqdm(datalist, desc="preprocess", disable=not study.progress):
        case = item["case"]
        data = preprocess({"image": item["image"], "label": item["label"]})
        image, label = data["image"], data["label"]
        affine = image.affine.numpy() if hasattr(image, "affine") else np.eye(4)
        image_path = save_like(image[0].numpy().astype(np.float32), affine, out / f"{case}_image.nii.gz")
        label_path = save_like(label[0].numpy().astype(np.uint8), affine, out / f"{case}_label.nii.gz")
        source_tumour = int((load_volume(item["label"]) == TUMOUR).sum())
        cases[case] = {
            "image": str(image_path),
            "label": str(label_path),
            "source_image": str(item["image"]),
            "source_label": str(item["label"]),
            "shape": list(image.shape[1:]),
            "tumour_voxels": int((label == TUMOUR).sum()),
            "source_tumour_voxels": source_tumour,
        }
    dropped = sorted(c for c, r in cases.items() if r["source_tumour_voxels"] and not r["tumour_voxels"])
    record = {"train": train, "test": test, "folds": [list(f) for f in folds], "cases": cases,
              "tumours_dropped_by_resampling": dropped}
    atomic_save_json(record, study.stage_dir("prepare") / "cases.json")
    save_settings(study)
    info = {"num_cases": len(names), "num_train": len(train), "num_test": len(test), "num_folds": len(folds),
            "tumours_dropped_by_resampling": len(dropped)}
    if dropped:
        logger.warning(f"prepare: resampling to {list(study.spacing)} mm leaves no tumour voxel in {dropped}")
    logger.info(f"prepare: {info}")
    return info


# ================================================================================================================
# segmenter
# ================================================================================================================
def _segmenter_dataset(
    study: PancreasStudy, case_ids: Sequence[str], num_samples: int, crop_ratios: Any, augment: Mapping[str, float]
) -> Dataset:
    """Patches of the preprocessed training volumes (``RandCropByPosNegLabeld`` / ``RandCropByLabelClassesd``), then
    ``augment`` (`segmenter_train_augmentation`'s flip and intensity-shift arguments)."""
    cases = study.cases()["cases"]
    data = [{"image": cases[c]["image"], "label": cases[c]["label"]} for c in case_ids]
    # one flat chain: CacheDataset caches the deterministic prefix (loading) and stops at the first random transform
    augmentation = segmenter_train_augmentation(
        study.patch_size, num_samples=num_samples, class_ratios=crop_ratios, **augment
    )
    transform = Compose([*load_preprocessed().transforms, *augmentation.transforms])
    return CacheDataset(data, transform, cache_rate=study.cache_rate, progress=False)


def _augment(flip_prob: float, intensity_shift: float, intensity_shift_prob: float) -> dict[str, float]:
    """The segmenter stages' augmentation arguments, as `segmenter_train_augmentation` takes them."""
    return {"flip_prob": flip_prob, "intensity_shift": intensity_shift, "intensity_shift_prob": intensity_shift_prob}


def _fit_segmenter(
    study: PancreasStudy, segmenter: Factory, case_ids: Sequence[str], fold_dir: Path, weights: Path,
    iterations: int, batch_size: int, num_samples: int, lr: float, seed: int, recipe: Mapping | None,
    augment: Mapping[str, float],
) -> torch.nn.Module:
    """`fit_segmenter` on patches of ``case_ids`` (checkpoints in ``fold_dir/checkpoints``; ``augment``: see
    :func:`_segmenter_dataset`)."""
    recipe = SegmenterRecipe.of(recipe)
    return fit_segmenter(
        study, segmenter, partial(_segmenter_dataset, study, case_ids, num_samples, recipe.crop_ratios, augment),
        fold_dir / "checkpoints", weights, iterations, batch_size, lr, seed, recipe,
        # drop_last: AH-Net's batch norm cannot train on a last batch of one 32^3 patch (a 1-voxel deepest map)
        drop_last=True, num_classes=study.num_classes,
    )


@study_stage("train_segmenter", training=True, after=("prepare",))
def train_segmenter(
    study: PancreasStudy,
    segmenter: Factory,
    iterations: int = 20000,
    batch_size: int = 2,
    num_samples: int = 2,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
    intensity_shift: float = 0.05,
    intensity_shift_prob: float = 0.5,
) -> dict:
    """Train the final segmenter on every training case -> ``models/segmenter.pt`` (``recipe``: `SegmenterRecipe`,
    the bundle's ``segmenter_recipe``; ``flip_prob``, ``intensity_shift``, ``intensity_shift_prob``: the patches'
    augmentation, see `segmenter_train_augmentation`)."""
    train = study.cases()["train"]
    augment = _augment(flip_prob, intensity_shift, intensity_shift_prob)
    _fit_segmenter(
        study, segmenter, train, study.stage_dir("train_segmenter"), study.models / "segmenter.pt",
        iterations, batch_size, num_samples, lr, seed=int(study.seed), recipe=recipe, augment=augment,
    )
    save_network_spec(study, "segmenter", segmenter)
    return {"num_train": len(train), "iterations": int(iterations)}


# ================================================================================================================
# cross-validation predictions (+ MC-Dropout features)
# ================================================================================================================
@study_stage("crossval", training=True, after=("prepare",))
def crossval(
    study: PancreasStudy,
    segmenter: Factory,
    iterations: int = 20000,
    batch_size: int = 2,
    num_samples: int = 2,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
    intensity_shift: float = 0.05,
    intensity_shift_prob: float = 0.5,
) -> dict:
    """K-fold CV on the training cases (the core's `run_crossval` layout in ``crossval/``): each fold's segmenter
    (``crossval/fold_{i}/segmenter.pt``) predicts its held-out cases, each case exactly once ->
    ``crossval/predictions/{case}_pred.nii.gz`` and ``_record.json`` (true DSC per class on the native grid, NaN =
    undefined; ROI box; MC-Dropout and predicted-volume features). Then ``crossval/cases.json`` (every case's record
    with its paths) and the quality regressors fitted on them -> ``models/mc_dropout_regressor.json``,
    ``models/volume_regressor.json`` (the label-only baseline). Resumable per fold. The folds train as
    `train_segmenter` does (``recipe``, ``flip_prob``, ``intensity_shift``, ``intensity_shift_prob``: the same
    meaning).
    """
    meta = study.cases()
    cases = [{"case": c, **meta["cases"][c]} for c in meta["train"]]
    augment = _augment(flip_prob, intensity_shift, intensity_shift_prob)

    def train_fold(train_cases: list[dict], fold_dir: Path) -> torch.nn.Module:
        return _fit_segmenter(
            study, segmenter, [c["case"] for c in train_cases], fold_dir, fold_dir / "segmenter.pt",
            iterations, batch_size, num_samples, lr, seed=fold_seed(study, fold_dir), recipe=recipe, augment=augment,
        )

    manifest = run_crossval(
        cases, len(meta["folds"]), study.stage_dir("crossval"), train_fold, partial(_predict_case, study),
        seed=int(study.seed), folds=meta["folds"], pred_format="nii.gz", progress=study.progress,
        restart=bool(study.force),
    )
    return on_main_process(_crossval_summary, study, manifest, iterations)


def _predict_case(study: PancreasStudy, net: torch.nn.Module, case: Mapping) -> dict:
    """A fold's segmenter on one held-out case: the label map (on the working grid) and its record."""
    image = load_volume(case["image"]).astype(np.float32)
    pred = segment_volume(study, net, image)
    x_roi, p_roi, box = roi_tensors(study, image, pred)
    seed = case_seed(study, case["case"])
    mc, _ = mc_dropout_feature(SlidingWindowNet(study, net), x_roi, p_roi, study.num_classes, study.mc_samples, seed)
    record = {"true_dsc": native_dsc(study, pred, case).tolist(), "roi_box": box.to_dict(), "mc_feature": mc.tolist(),
              "volume_feature": volume_feature(study, pred).tolist()}
    return {"pred": pred, "affine": nib.load(case["image"]).affine, "record": record}


def _crossval_summary(study: PancreasStudy, manifest: Sequence[Mapping], iterations: int) -> dict:
    """The manifest's records -> ``crossval/cases.json`` (absolute paths), the MC-Dropout and predicted-volume
    regressors fitted on them, the stage's info."""
    out = study.stage_dir("crossval")
    records = {
        e["case"]: {"fold": e["fold"], "image": e["image"], "label": e["label"], "pred": str(out / e["pred"]),
                    **e["record"]}
        for e in sorted(manifest, key=lambda e: e["case"])
    }
    atomic_save_json(records, out / "cases.json")
    true = np.array([r["true_dsc"] for r in records.values()], dtype=np.float64)
    fit_cv_regressors(
        study.num_classes, true, np.array([r["mc_feature"] for r in records.values()], dtype=np.float64),
        np.array([r["volume_feature"] for r in records.values()], dtype=np.float64),
        study.models / "mc_dropout_regressor.json", study.models / "volume_regressor.json",
    )
    return {
        "num_cases": len(records),
        "num_folds": len(study.cases()["folds"]),
        "iterations": int(iterations),
        "cv_mean_dsc": {n: nanmean(true[:, k]) for k, n in enumerate(study.class_names)},
        "cv_dsc_spread": {n: quality_spread(true[:, k]) for k, n in enumerate(study.class_names) if k},
        "tumour_dsc_undefined": int(np.isnan(true[:, TUMOUR]).sum()),
        "roi_fallbacks": int(sum(r["roi_box"]["fallback"] for r in records.values())),
    }


def cv_records(study: PancreasStudy) -> dict[str, dict]:
    """Every cross-validated training case's record (``crossval/cases.json``: fold, paths, true DSC, ROI box,
    MC-Dropout feature), by case."""
    records = json.loads(require_file(study.out / "crossval" / "cases.json", "crossval").read_text())
    return study.resolve_paths(records, "crossval")
