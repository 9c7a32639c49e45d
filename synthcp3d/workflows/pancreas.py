"""Stages of the 3D flagship study: MSD pancreas tumour DSC prediction (SynthCP paper, Table 2).

The bundle ``bundles/pancreas_ct_synthcp`` builds a :class:`PancreasStudy` (shared settings) and the networks
(``_target_`` factories) in ``configs/common.yaml``; each stage config calls one stage function (modules: see
the end). Outputs, all below ``output_dir`` (see the bundle README for the full layout):

- ``prepare``: seeded split (``train_fraction`` of the labelled cases for training, paper: 200 of 281), the K folds
  of the training part, every case resampled/windowed once (``prepare/volumes``);
- ``train_segmenter``: AH-Net on all training cases -> ``models/segmenter.pt``;
- ``crossval``: K AH-Nets, each predicts its held-out fold (every training case exactly once) ->
  ``crossval/predictions``, ``crossval/cases.json`` (true DSC, ROI, MC-Dropout features), and the MC-Dropout
  regressor fitted on them -> ``models/mc_dropout_regressor.json``;
- ``train_synthesizer``: 3D SPADE on ground-truth (label, image) pancreas-ROI pairs -> ``models/generator.pt``;
- ``train_comparator``: SynthCP comparator (``x``, ``G(ŷ)``, ``ŷ``) and Direct Prediction (``x``, ``ŷ``) on the
  cross-validated predictions -> ``models/comparator_synthcp.pt``, ``models/comparator_direct.pt``;
- ``train_vae_alarm``: mask VAE on ground-truth masks (tight crop), then its reconstruction Dice on the CV
  predictions regressed onto the true DSC -> ``models/mask_vae.pt``, ``models/vae_alarm_regressor.json``;
- ``evaluate``: the final segmenter predicts the test cases; every method predicts their DSC; Table-2 report;
- ``inference``: segmentation + predicted DSC for a folder of new volumes.

Crop rule (``synthcp3d.roi``): a fixed ``roi_size`` box centred on the bounding box of the predicted pancreas
(the largest connected component of labels > 0 of ``ŷ``), shifted to stay inside the volume; an empty prediction falls back to the volume centre
(counted in the report). Undefined DSC (tumour absent from both ground truth and prediction) is NaN: excluded from
the metrics and counted. True DSC (reports, regressors) is computed on each case's own label grid (``native_dsc``);
the comparator is trained on the DSC inside its ROI on the working grid (the two differ by predictions outside the
ROI and by the resampling).

Modules: this one (``prepare``, ``train_segmenter``, ``crossval``, and the training helpers the others share),
:mod:`synthcp3d.workflows.pancreas_judges` (``train_synthesizer``, ``train_comparator``, ``train_vae_alarm``) and
:mod:`synthcp3d.workflows.pancreas_report` (``evaluate``, ``inference``). The trained model these stages write
(settings, networks, regressors) is :mod:`synthcp3d.workflows.pancreas_model`, and the per-case scoring that
``evaluate`` and ``inference`` share with the DSC alarm is :mod:`synthcp3d.workflows.pancreas_scoring`: neither holds
training code or imports a stage module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose
from monai.utils import set_determinism
from tqdm.auto import tqdm

from synthcp3d.data.msd import check_msd_folder, load_msd_datalist
from synthcp3d.data.volume_io import save_like
from synthcp3d.engines.checkpoint import load_weights, save_weights
from synthcp3d.engines.crossval import make_folds
from synthcp3d.engines.distributed import unwrap
from synthcp3d.engines.sampling import make_train_loader
from synthcp3d.engines.segmentation import SegmentationLoss, SegmenterTrainer
from synthcp3d.engines.training import run_training
from synthcp3d.errors import SynthCPInputError
from synthcp3d.evidence import quality_spread
from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor
from synthcp3d.transforms import load_preprocessed, segmenter_train_augmentation
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import nanmean, on_main_process, require_file, save_network_spec, study_stage
from synthcp3d.workflows.pancreas_model import (
    TUMOUR,
    Factory,
    PancreasStudy,
    load_volume,
    save_label_map,
    save_settings,
)
from synthcp3d.workflows.pancreas_scoring import mc_features, native_dsc, roi_tensors, segment_volume

__all__ = [
    # stages, in order
    "prepare",
    "train_segmenter",
    "crossval",
    "SegmenterRecipe",
    # shared with the other stage modules
    "seed_stage",
    "train_loader",
    "run_trainer",
    "cv_records",
]

logger = logging.getLogger(__name__)


def _make_folds(case_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    return [list(f) for f in make_folds(list(case_ids), k=k, seed=seed)]


def seed_stage(study: PancreasStudy, offset: int = 0) -> None:
    """Seed every generator (MONAI ``set_determinism``) with the study seed + ``offset`` (one offset per stage)."""
    set_determinism(seed=int(study.seed) + offset)


def train_loader(study: PancreasStudy, dataset: Dataset, batch_size: int, seed: int, drop_last: bool = False):
    """A seeded, shuffling training loader of ``dataset`` (split over the ranks in a distributed run)."""
    return make_train_loader(
        dataset, batch_size=batch_size, seed=seed, num_workers=study.num_workers, drop_last=drop_last
    )


def run_trainer(study: PancreasStudy, trainer: Any, iterations: int, checkpoint_dir: Path) -> None:
    """Run ``trainer`` for ``iterations`` (resumable from ``checkpoint_dir`` unless ``force``)."""
    run_training(trainer, int(iterations), checkpoint_dir, **study.train_kwargs(iterations))


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
@dataclass
class SegmenterRecipe:
    """How the segmenter is trained (bundle config ``segmenter_recipe``; the same for the final model and the folds).

    Attributes:
        include_background: count the background in the Dice term.
        batch_dice: Dice of each class summed over the batch (a patch without tumour does not reward missing it).
        class_weights: per-class weights of the loss (MONAI ``DiceCELoss(weight=...)``), e.g. ``[1, 1, 3]``.
        crop_ratios: patch centres per class, e.g. background : pancreas : tumour ``[1, 1, 2]``; None = 1:2
            background : foreground (``RandCropByPosNegLabeld``).
        lr_decay: ``"poly"`` (``(1 - t/T) ** 0.9``, nnU-Net's schedule) or ``"none"``.
        weight_decay: Adam's weight decay.
    """

    include_background: bool = True
    batch_dice: bool = False
    class_weights: Sequence[float] | None = None
    crop_ratios: Sequence[float] | None = None
    lr_decay: str = "none"
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        if self.lr_decay not in ("poly", "none"):
            raise SynthCPInputError(f"segmenter_recipe.lr_decay must be 'poly' or 'none', got {self.lr_decay!r}")

    def loss(self) -> torch.nn.Module:
        return SegmentationLoss(
            include_background=self.include_background, batch=self.batch_dice, class_weights=self.class_weights
        )


def _segmenter_loader(
    study: PancreasStudy, case_ids: Sequence[str], batch_size: int, num_samples: int, seed: int,
    crop_ratios: Sequence[float] | None = None,
):
    cases = study.cases()["cases"]
    data = [{"image": cases[c]["image"], "label": cases[c]["label"]} for c in case_ids]
    # one flat chain: CacheDataset caches the deterministic prefix (loading) and stops at the first random transform
    augmentation = segmenter_train_augmentation(study.patch_size, num_samples=num_samples, class_ratios=crop_ratios)
    transform = Compose([*load_preprocessed().transforms, *augmentation.transforms])
    dataset = CacheDataset(data, transform, cache_rate=study.cache_rate, progress=False)
    # drop_last: AH-Net's batch norm cannot train on a last batch of one 32^3 patch (a 1-voxel deepest map)
    return train_loader(study, dataset, batch_size, seed, drop_last=True)


def _fit_segmenter(
    study: PancreasStudy,
    segmenter: Factory,
    case_ids: Sequence[str],
    out_dir: Path,
    weights_path: Path,
    iterations: int,
    batch_size: int,
    num_samples: int,
    lr: float,
    seed: int,
    recipe: SegmenterRecipe | Mapping | None = None,
) -> torch.nn.Module:
    """Train one segmenter on ``case_ids`` (resumable from ``out_dir`` checkpoints); save weights atomically.
    Returns it unwrapped (distributed runs: every rank holds the same weights)."""
    recipe = recipe if isinstance(recipe, SegmenterRecipe) else SegmenterRecipe(**dict(recipe or {}))
    set_determinism(seed=seed)
    if weights_path.is_file() and not study.force:
        net = segmenter().to(study.torch_device)
        load_weights({"segmenter": net}, weights_path)
        return net
    net = study.prepare_network(segmenter())
    loader = _segmenter_loader(study, case_ids, batch_size, num_samples, seed, recipe.crop_ratios)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=int(iterations), power=0.9)
        if recipe.lr_decay == "poly" else None
    )
    trainer = SegmenterTrainer(
        study.torch_device, loader, net, optimizer, loss_function=recipe.loss().to(study.torch_device),
        lr_scheduler=scheduler,
    )
    run_trainer(study, trainer, iterations, out_dir)
    save_weights({"segmenter": net}, weights_path)
    return unwrap(net)


@study_stage("train_segmenter", training=True, after=("prepare",))
def train_segmenter(
    study: PancreasStudy,
    segmenter: Factory,
    iterations: int = 20000,
    batch_size: int = 2,
    num_samples: int = 2,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
) -> dict:
    """Train the final segmenter on every training case -> ``models/segmenter.pt`` (``recipe``: `SegmenterRecipe`)."""
    train = study.cases()["train"]
    _fit_segmenter(
        study, segmenter, train, study.stage_dir("train_segmenter") / "checkpoints", study.models / "segmenter.pt",
        iterations, batch_size, num_samples, lr, seed=int(study.seed), recipe=recipe,
    )
    save_network_spec(study, "segmenter", segmenter)
    return {"num_train": len(train), "iterations": int(iterations)}


# ================================================================================================================
# cross-validation predictions (+ MC-Dropout features)
# ================================================================================================================
def _case_record(study: PancreasStudy, net: torch.nn.Module, case: Mapping, pred: np.ndarray) -> dict:
    image = load_volume(case["image"]).astype(np.float32)
    x_roi, p_roi, box = roi_tensors(study, image, pred)
    mc, _ = mc_features(study, net, x_roi, p_roi)
    return {"true_dsc": native_dsc(study, pred, case).tolist(), "roi_box": box.to_dict(), "mc_feature": mc.tolist()}


@study_stage("crossval", training=True, after=("prepare",))
def crossval(
    study: PancreasStudy,
    segmenter: Factory,
    iterations: int = 20000,
    batch_size: int = 2,
    num_samples: int = 2,
    lr: float = 1e-4,
    recipe: Mapping | None = None,
) -> dict:
    """K-fold CV on the training cases: each fold's AH-Net predicts its held-out cases (each case exactly once).

    Writes ``crossval/fold_{i}/segmenter.pt``, ``crossval/predictions/{case}_pred.nii.gz`` and ``crossval/cases.json``
    (per case: fold, paths, true DSC per class (NaN = undefined), ROI box, MC-Dropout feature), and fits the
    MC-Dropout quality regressor on them -> ``models/mc_dropout_regressor.json``. Finished folds are skipped.
    """
    meta = study.cases()
    folds = meta["folds"]
    out = study.stage_dir("crossval")
    for i, held_out in enumerate(folds):
        fold_dir = out / f"fold_{i}"
        if (fold_dir / "cases.json").is_file() and not study.force:
            continue
        train_ids = [c for j, f in enumerate(folds) if j != i for c in f]
        logger.info(f"crossval fold {i + 1}/{len(folds)}: train on {len(train_ids)}, predict {len(held_out)}")
        net = _fit_segmenter(
            study, segmenter, train_ids, fold_dir / "checkpoints", fold_dir / "segmenter.pt",
            iterations, batch_size, num_samples, lr, seed=int(study.seed) + 1 + i, recipe=recipe,
        )
        on_main_process(_predict_fold, study, net, i, held_out, len(train_ids))
    return on_main_process(_crossval_summary, study, iterations)


def _predict_fold(
    study: PancreasStudy, net: torch.nn.Module, fold: int, held_out: Sequence[str], num_train: int
) -> None:
    """Fold ``fold``'s segmenter predicts its held-out cases -> ``crossval/predictions``, then
    ``crossval/fold_{fold}/cases.json`` (the fold's completion marker)."""
    cases = study.cases()["cases"]
    out = study.stage_dir("crossval")
    fold_records = {}
    for case_id in tqdm(held_out, desc=f"fold {fold} predict", disable=not study.progress):
        case = cases[case_id]
        pred = segment_volume(study, net, load_volume(case["image"]).astype(np.float32))
        pred_path = save_label_map(pred, case["image"], out / "predictions" / f"{case_id}_pred.nii.gz")
        record = _case_record(study, net, case, pred)
        fold_records[case_id] = {
            "fold": fold, "image": case["image"], "label": case["label"], "pred": str(pred_path),
            "train_cases": num_train, **record,
        }
    atomic_save_json(fold_records, out / f"fold_{fold}" / "cases.json")


def _crossval_summary(study: PancreasStudy, iterations: int) -> dict:
    """Every fold's records -> ``crossval/cases.json``, the MC-Dropout regressor fitted on them, the stage's info."""
    out = study.stage_dir("crossval")
    folds = study.cases()["folds"]
    records: dict[str, dict] = {}
    for i in range(len(folds)):
        records.update(json.loads((out / f"fold_{i}" / "cases.json").read_text()))
    ordered = {c: records[c] for c in sorted(records)}
    atomic_save_json(ordered, out / "cases.json")
    true = np.array([r["true_dsc"] for r in ordered.values()], dtype=np.float64)
    feats = np.array([r["mc_feature"] for r in ordered.values()], dtype=np.float64)
    regressor = MCDropoutQualityRegressor(study.num_classes).fit(feats, true)
    atomic_save_json(regressor.state_dict(), study.models / "mc_dropout_regressor.json")
    return {
        "num_cases": len(ordered),
        "num_folds": len(folds),
        "iterations": int(iterations),
        "cv_mean_dsc": {n: nanmean(true[:, k]) for k, n in enumerate(study.class_names)},
        "cv_dsc_spread": {n: quality_spread(true[:, k]) for k, n in enumerate(study.class_names) if k},
        "tumour_dsc_undefined": int(np.isnan(true[:, TUMOUR]).sum()),
        "roi_fallbacks": int(sum(r["roi_box"]["fallback"] for r in ordered.values())),
    }


def cv_records(study: PancreasStudy) -> dict[str, dict]:
    """Every cross-validated training case's record (``crossval/cases.json``: fold, paths, true DSC, ROI box,
    MC-Dropout feature), by case."""
    return json.loads(require_file(study.out / "crossval" / "cases.json", "crossval").read_text())
