"""Stages of the 3D flagship study: MSD pancreas tumour DSC prediction (SynthCP paper, Table 2).

The bundle ``bundles/pancreas_ct_synthcp`` builds a :class:`PancreasStudy` (shared settings) and the networks
(``_target_`` factories) in ``configs/common.yaml``; each stage config calls one function below. Outputs, all below
``output_dir`` (see the bundle README for the full layout):

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
the metrics and counted. True DSC is computed on the whole (preprocessed) volume; the comparator is trained on the
DSC inside its ROI (the two differ only by predictions outside the ROI).

The trained model these stages write (settings, networks, regressors) and the per-case scoring that ``evaluate`` and
``inference`` share with the DSC alarm live in :mod:`synthcp3d.workflows.pancreas_model`, which holds no training
code and does not import this module.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, RandFlipd
from monai.utils import set_determinism
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError
from synthcp3d.evidence import quality_spread
from synthcp3d.roi import PancreasROICropd, crop_to_box
from synthcp3d.transforms import load_preprocessed, segmenter_train_augmentation
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import (
    DONE,
    fit_synthesizer,
    nanmean,
    on_main_process,
    require_file,
    save_network_spec,
    study_stage,
    write_csv_rows,
)
from synthcp3d.workflows.pancreas_model import (
    ABLATIONS,
    METHODS,
    NETWORKS,
    PANCREAS,
    TUMOUR,
    CaseScores,
    Factory,
    PancreasStudy,
    load_network,
    load_trained_models,
    load_volume,
    mc_features,
    native_dsc,
    roi_tensors,
    save_label_map,
    save_network,
    save_settings,
    score_case,
    score_synthesis,
    segment_volume,
    segmenter_name,
    vae_input,
)

__all__ = [
    # stages, in order
    "prepare",
    "train_segmenter",
    "crossval",
    "train_synthesizer",
    "train_comparator",
    "train_vae_alarm",
    "evaluate",
    "inference",
    "SegmenterRecipe",
]

logger = logging.getLogger(__name__)

def _make_folds(case_ids: Sequence[str], k: int, seed: int) -> list[list[str]]:
    try:
        from synthcp3d.engines.crossval import make_folds
    except ImportError:  # engines' make_folds is the reference; a seeded sklearn KFold is the same contract
        from sklearn.model_selection import KFold

        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(len(case_ids)))
        return [sorted(case_ids[i] for i in held) for _, held in splits]
    return [list(f) for f in make_folds(list(case_ids), k=k, seed=seed)]


def _set_seed(study: PancreasStudy, offset: int = 0) -> None:
    set_determinism(seed=int(study.seed) + offset)


def _loader(study: PancreasStudy, dataset: Dataset, batch_size: int, seed: int, drop_last: bool = False):
    from synthcp3d.engines.sampling import make_train_loader

    return make_train_loader(
        dataset, batch_size=batch_size, seed=seed, num_workers=study.num_workers, drop_last=drop_last
    )


def _train(study: PancreasStudy, trainer: Any, iterations: int, checkpoint_dir: Path) -> None:
    """Run ``trainer`` for ``iterations`` (resumable from ``checkpoint_dir`` unless ``force``)."""
    from synthcp3d.engines.training import run_training

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
    from synthcp3d.data.msd import check_msd_folder, load_msd_datalist
    from synthcp3d.data.volume_io import save_like

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
        from synthcp3d.engines.segmentation import SegmentationLoss

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
    return _loader(study, dataset, batch_size, seed, drop_last=True)


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
    from synthcp3d.engines.checkpoint import load_weights, save_weights
    from synthcp3d.engines.distributed import unwrap
    from synthcp3d.engines.segmentation import SegmenterTrainer

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
    _train(study, trainer, iterations, out_dir)
    save_weights({"segmenter": net}, weights_path)
    return unwrap(net)


@study_stage("train_segmenter", training=True)
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


@study_stage("crossval", training=True)
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
    from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor

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


# ================================================================================================================
# synthesizer
# ================================================================================================================
def _roi_pair_dataset(
    study: PancreasStudy, items: Sequence[dict], source_key: str, jitter: int, keys: Sequence[str]
) -> CacheDataset:
    """Dataset of pancreas-ROI crops ``(1, *roi)`` of ``keys``, centred on ``source_key``'s labels > 0."""
    transform = Compose(
        [
            *load_preprocessed(keys).transforms,
            PancreasROICropd(keys, source_key=source_key, roi_size=study.roi_size, pad_values={"image": -1.0},
                             jitter=jitter, seed=int(study.seed)),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
        ]
    )
    return CacheDataset(items, transform, cache_rate=study.cache_rate, progress=False)


@study_stage("train_synthesizer", training=True)
def train_synthesizer(
    study: PancreasStudy,
    generator: Factory,
    discriminator: Factory,
    iterations: int = 50000,
    batch_size: int = 2,
    lr_g: float = 1e-4,
    lr_d: float = 4e-4,
    jitter: int = 4,
    feature_matching_weight: float = 10.0,
    reconstruction_weight: float = 0.0,
    class_mean_weight: float = 0.0,
    lr_decay_fraction: float = 0.0,
) -> dict:
    """3D SPADE on ground-truth (label, image) pancreas-ROI pairs of the training cases -> ``models/generator.pt``,
    and the class-mean painter (its non-learned replacement) on the same crops -> ``models/painter.json``.

    The ROI is centred on the ground-truth pancreas with a random shift of up to ``jitter`` voxels per axis (the
    test-time centre comes from a prediction). ``reconstruction_weight`` adds an L1 term and
    ``class_mean_weight`` a per-class mean-intensity term (see `GanTrainer`); ``lr_decay_fraction`` is SPADE's
    linear LR decay (see `fit_synthesizer`).
    """
    _set_seed(study, 100)
    meta = study.cases()
    items = [{"image": meta["cases"][c]["image"], "label": meta["cases"][c]["label"]} for c in meta["train"]]
    dataset = _roi_pair_dataset(study, items, "label", jitter, ("image", "label"))
    loader = _loader(study, dataset, batch_size, int(study.seed) + 100)
    g = fit_synthesizer(
        study, generator, discriminator, loader, iterations, study.stage_dir("train_synthesizer") / "checkpoints",
        num_classes=study.num_classes, lr_g=lr_g, lr_d=lr_d, feature_matching_weight=feature_matching_weight,
        reconstruction_weight=reconstruction_weight, class_mean_weight=class_mean_weight,
        lr_decay_fraction=lr_decay_fraction,
    )
    save_network(study, "generator", g, generator)
    return on_main_process(_fit_painter, study, g, dataset, iterations)


def _fit_painter(study: PancreasStudy, g: torch.nn.Module, dataset: Dataset, iterations: int) -> dict:
    """The class-mean painter on the synthesizer's training crops -> ``models/painter.json``; the stage's info."""
    from synthcp3d.scoring.synthesis import ClassMeanPainter

    painter = ClassMeanPainter(study.num_classes).fit((d["image"], d["label"]) for d in dataset)
    atomic_save_json(painter.state_dict(), study.models / "painter.json")
    return {"iterations": int(iterations), "train_roi_l1": _synthesis_l1(study, g, dataset)}


@torch.no_grad()
def _synthesis_l1(study: PancreasStudy, g: torch.nn.Module, dataset: Dataset, n: int = 8) -> float:
    """Mean |G(y) - x| on a few training ROIs (in [-1, 1] units): a sanity figure for the log."""
    from synthcp3d.networks.synthesizer import one_hot_labels

    g.eval()
    errs = []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        x = torch.as_tensor(item["image"])[None].float().to(study.torch_device)
        y = torch.as_tensor(item["label"])[None].long().to(study.torch_device)
        errs.append(float((g(one_hot_labels(y, study.num_classes)) - x).abs().mean()))
    return float(np.mean(errs)) if errs else float("nan")


# ================================================================================================================
# comparators (SynthCP + Direct Prediction)
# ================================================================================================================
@study_stage("train_comparator", training=True)
def train_comparator(
    study: PancreasStudy,
    comparator: Factory,
    direct: Factory,
    generator: Factory,
    iterations: int = 20000,
    batch_size: int = 4,
    lr: float = 1e-4,
    jitter: int = 2,
    quality_loss: str = "l1",
    weight_decay: float = 1e-4,
) -> dict:
    """Train SynthCP's comparator on ``(x, G(ŷ), ŷ)`` and Direct Prediction on ``(x, ŷ)``, both on the CV predictions.

    Same data, same schedule, same seed for both: Direct Prediction is the ablation without synthesis.
    ``quality_loss``: ``"l1"`` (paper eq. 8) or ``"bce"`` (see `comparator_loss`).
    """
    from functools import partial

    from synthcp3d.engines.comparator import ComparatorTrainer, comparator_optimizer
    from synthcp3d.networks.comparator import comparator_loss

    records = _cv_records(study)
    items = [{"image": r["image"], "label": r["label"], "pred": r["pred"]} for r in records.values()]
    dataset = _roi_pair_dataset(study, items, "pred", jitter, ("image", "label", "pred"))
    g = load_network(study, "generator", generator)
    for name, factory in (("comparator_synthcp", comparator), ("comparator_direct", direct)):
        if (study.models / NETWORKS[name][0]).is_file() and not study.force:
            continue
        _set_seed(study, 200)
        net = study.prepare_network(factory())
        loader = _loader(study, dataset, batch_size, int(study.seed) + 200)
        optimizer = comparator_optimizer(net, lr, weight_decay)
        trainer = ComparatorTrainer(
            study.torch_device, loader, net, optimizer, num_classes=study.num_classes, generator=g, metric="dice",
            loss_function=partial(comparator_loss, quality_loss=quality_loss),
        )
        checkpoints = study.stage_dir("train_comparator") / f"checkpoints_{name.split('_', 1)[1]}"
        _train(study, trainer, iterations, checkpoints)
        save_network(study, name, net, factory)
    return {"num_cases": len(items), "iterations": int(iterations), "quality_loss": quality_loss}


def _cv_records(study: PancreasStudy) -> dict[str, dict]:
    return json.loads(require_file(study.out / "crossval" / "cases.json", "crossval").read_text())


# ================================================================================================================
# VAE alarm
# ================================================================================================================
@study_stage("train_vae_alarm", training=True)
def train_vae_alarm(
    study: PancreasStudy,
    mask_vae: Factory,
    iterations: int = 20000,
    batch_size: int = 4,
    lr: float = 1e-4,
    beta: float = 1e-3,
    feature: str = "loss",
) -> dict:
    """VAE alarm (Liu et al., ICCV 2019, reimplemented): a mask VAE on ground-truth masks (tight crop, aspect kept),
    then its ``feature`` of the CV predictions (``"loss"``: the VAE's loss value, as published; ``"dice"``: the
    reconstruction Dice, a named variant) regressed (linear, per class) onto their true DSC.

    Writes ``models/mask_vae.pt`` and ``models/vae_alarm_regressor.json``.
    """
    from synthcp3d.engines.distributed import unwrap
    from synthcp3d.engines.mask_vae import MaskVAETrainer

    if feature not in ("loss", "dice"):
        raise SynthCPInputError(f"VAE alarm feature must be 'loss' or 'dice', got {feature!r}")
    _set_seed(study, 300)
    meta = study.cases()
    masks = []
    for c in tqdm(meta["train"], desc="VAE masks", disable=not study.progress):
        onehot = vae_input(study, load_volume(meta["cases"][c]["label"]))
        masks.append({"label": onehot.argmax(1).cpu()})  # (1, *vae_shape)
    dataset = Dataset(masks, RandFlipd("label", prob=0.5, spatial_axis=2))
    loader = _loader(study, dataset, batch_size, int(study.seed) + 300)
    vae = study.prepare_network(mask_vae())
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    trainer = MaskVAETrainer(study.torch_device, loader, vae, optimizer, num_classes=study.num_classes, beta=beta)
    _train(study, trainer, iterations, study.stage_dir("train_vae_alarm") / "checkpoints")
    save_network(study, "mask_vae", vae, mask_vae)
    return on_main_process(_fit_vae_regressor, study, unwrap(vae), iterations, feature)


def _fit_vae_regressor(study: PancreasStudy, vae: torch.nn.Module, iterations: int, feature: str) -> dict:
    """The VAE's ``feature`` of every CV prediction regressed onto its true DSC -> ``models/vae_alarm_regressor.json``
    (+ ``train_vae_alarm/cv_features.json``); the stage's info."""
    from synthcp3d.scoring.regression import LinearQualityRegressor
    from synthcp3d.scoring.vae_alarm import per_class_vae_feature

    records = _cv_records(study)
    feats, true = [], []
    vae.eval()
    for r in tqdm(records.values(), desc="VAE features", disable=not study.progress):
        with torch.no_grad():
            feats.append(per_class_vae_feature(vae, vae_input(study, load_volume(r["pred"])), feature))
        true.append(r["true_dsc"])
    feats_arr, true_arr = np.array(feats, dtype=np.float64), np.array(true, dtype=np.float64)
    regressor = LinearQualityRegressor(study.num_classes, missing_feature_quality=0.0).fit(feats_arr, true_arr)
    atomic_save_json({**regressor.state_dict(), "vae_feature": feature}, study.models / "vae_alarm_regressor.json")
    features = {c: f.tolist() for c, f in zip(records, feats_arr)}
    atomic_save_json(features, study.stage_dir("train_vae_alarm") / "cv_features.json")
    return {"iterations": int(iterations), "num_cv_cases": len(records), "feature": feature}


# ================================================================================================================
# evaluate
# ================================================================================================================
@study_stage("evaluate")
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
    from synthcp3d.evidence import (
        comparison_figure,
        pixel_section,
        segmenter_section,
        synthesis_section,
        synthesis_use_section,
    )
    from synthcp3d.report import quality_report

    meta = study.cases()
    nets = load_trained_models(study, segmenter, generator, comparator, direct, mask_vae)
    out = study.stage_dir("evaluate")
    preds: dict[str, list[np.ndarray]] = {m: [] for m in (*METHODS, *ABLATIONS)}
    maps: dict[str, list[np.ndarray]] = {}
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
        scores = score_case(study, nets, image, pred)
        for m, q in scores.quality.items():
            preds[m].append(q)
        for m, v in scores.error_maps.items():
            maps.setdefault(m, []).append(v.ravel())
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
    cv_true = np.array([r["true_dsc"] for r in _cv_records(study).values()], dtype=np.float64)
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
               **{key: data for key, (_, data) in zip(("segmenter", "synthesis", "synthesis_use", "pixel"), sections)}},
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
        "caption": f"{case_id} z={z}\ntumour DSC true {_fmt(true[TUMOUR])} / SynthCP {_fmt(q[TUMOUR])}",
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


# ================================================================================================================
# inference on a folder of new volumes
# ================================================================================================================
@study_stage("inference")
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
    import nibabel as nib

    from synthcp3d.data.geometry import affine_of, resample_to_grid
    from synthcp3d.data.volume_io import save_like

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
        case_scores = score_case(study, nets, image[0].numpy(), pred)
        scores, box = case_scores.quality, case_scores.box
        grid = nib.load(path)  # the input's own grid: only the header is read
        seg = resample_to_grid(pred, affine_of(image), grid.affine, tuple(grid.shape[:3]), "nearest")
        save_like(np.rint(seg).astype(np.uint8), grid.affine, out / f"{case_id}_seg.nii.gz")
        row = {"case": case_id, "input": str(path), "roi_fallback": box.fallback}
        for m, q in scores.items():
            row[f"{m}|pancreas"] = float(q[PANCREAS])
            row[f"{m}|tumour"] = float(q[TUMOUR])
        rows.append(row)
    write_csv_rows(rows, out / "predicted_dsc.csv")
    atomic_save_json(rows, out / "predicted_dsc.json")
    print(f"inference: {len(rows)} volume(s) from {folder}; segmentations and predicted DSC in {out}", flush=True)
    return {"num_volumes": len(rows), "input_dir": str(folder)}


