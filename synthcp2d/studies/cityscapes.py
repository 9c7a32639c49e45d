"""Stages of the Cityscapes failure-detection study (SynthCP paper, Table 1 and Fig. 5).

The bundle ``bundles/cityscapes_failure_synthcp`` builds a :class:`CityscapesStudy` and the networks in
``configs/common.yaml``; each stage config calls one function below. Outputs below ``output_dir``:

- ``prepare``: check the folder, list train / val, cache every image resized to ``image_size``, make the K folds of
  the training split (contiguous blocks of cities as the authors did, or seeded: ``fold_split``);
- ``train_segmenter``: every segmenter of ``segmenters`` (FCN-8, DeepLab-v2) on the whole training split ->
  ``models/segmenter_<name>.pt``;
- ``crossval``: per segmenter, K models each predicting their held-out fold (``crossval/<name>/``, the core's
  `run_crossval` layout) + the MC-Dropout feature of every prediction and the per-class MC-Dropout regressor fitted
  on them -> ``models/mc_dropout_<name>.json``;
- ``train_synthesizer`` (``synthcp2d.studies.common``): 2D SPADE on ground-truth (label, image) pairs ->
  ``models/generator.pt``;
- ``train_comparator``: per segmenter, the comparator in every mode of ``comparator_modes`` (``joint``, ``separate``,
  and ``direct`` = Direct Prediction) on that segmenter's CV predictions -> ``models/comparator_<name>_<mode>.pt``;
- ``train_baselines``: TCP (ConfidNet head on each frozen segmenter) and the VAE alarm (mask VAE on ground-truth
  label maps, ignore pixels filled with the nearest label, + a per-class linear regressor from the VAE loss to IoU
  fitted on each segmenter's CV predictions);
- ``evaluate``: on the val split, per segmenter: image-level (MAE, STD, P.C., S.C. of per-class IoU) and pixel-level
  (FPR95, AUPR-Error, AUPR-Success, AUROC; streamed, both reductions) tables; the cross-model row (comparators
  trained on ``cross_model[0]``'s CV predictions judging ``cross_model[1]``'s masks); per-image scores; Fig. 5.

Ignore-label pixels (trainId 255) are excluded from every target and metric.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from synthcp2d.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_IGNORE_INDEX,
    check_cityscapes_folder,
    load_cityscapes_datalist,
    load_label_train_ids,
    train_ids_to_color,
)
from synthcp2d.studies.common import (
    Factory,
    StreetStudy,
    cache_cases,
    case_dataset,
    fit_confidnet,
    fit_segmenter,
    image_tensor,
    load_cached,
    load_net,
    segment,
    synthesize,
)
from synthcp2d.studies.figures import metrics_markdown, panel_figure, to_display_image
from synthcp3d.errors import SynthCPInputError
from synthcp3d.targets import per_class_quality
from synthcp3d.utils.atomic import atomic_path, atomic_save_json, atomic_save_text
from synthcp3d.workflows.common import (
    nanmean,
    on_main_process,
    require_file,
    save_network_spec,
    study_stage,
    write_csv_rows,
)

__all__ = [
    "CityscapesStudy",
    "PIXEL_METHODS",
    "IMAGE_METHODS",
    "prepare",
    "train_segmenter",
    "crossval",
    "train_comparator",
    "train_baselines",
    "evaluate",
]

logger = logging.getLogger(__name__)

IGNORE = CITYSCAPES_IGNORE_INDEX
MODE_NAMES = {"direct": "Direct Prediction", "separate": "SynthCP-separate", "joint": "SynthCP-joint"}
#: Table 1 rows, in order (comparator rows only for the trained modes).
PIXEL_METHODS = ("MSP", "MC-Dropout", "TCP", "Direct Prediction", "SynthCP-separate", "SynthCP-joint")
IMAGE_METHODS = (
    "MC-Dropout", "MC-Dropout (full linear map)", "VAE alarm", "Pairwise IoU (fold ensemble)", "Direct Prediction", "SynthCP-separate", "SynthCP-joint",
)
PIXEL_COLUMNS = (
    ("FPR95", "FPR95 ↓"),
    ("AUPR_Error", "AUPR-Error ↑"),
    ("AUPR_Success", "AUPR-Success ↑"),
    ("AUROC", "AUROC ↑"),
)
REDUCTIONS = ("pooled", "per_image")


@dataclass
class CityscapesStudy(StreetStudy):
    """Settings of the Cityscapes study (``configs/common.yaml``); see `StreetStudy` for the shared ones.

    Attributes:
        segmenters: names of the segmenters judged (keys of the config's ``segmenters`` mapping).
        comparator_modes: comparator variants trained per segmenter (``joint``, ``separate``, ``direct``).
        num_folds: K of the cross-validation on the training split (paper: 4).
        fold_split: ``"city"`` (contiguous blocks of cities, as the authors) or ``"seeded"`` (seeded shuffle, cities
            still never split).
        cross_model: ``(trained on, tested on)``: the comparators trained on the first segmenter's CV predictions
            judge the second one's masks (the paper: DeepLab-v2 -> FCN-8); ``None`` or an absent name: no row.
        mc_samples: MC-Dropout passes (paper: 50).
        vae_shape: ``(H, W)`` the label maps are resized to (nearest) for the VAE alarm.
        save_pixel_scores: write every method's error map per val image (``evaluate/<segmenter>/scores``).
        num_bins: histogram bins of the pooled (streaming) metrics.
        figure_cases: val images shown in the Fig. 5 panel.
    """

    segmenters: Sequence[str] = ("fcn8", "deeplabv2")
    comparator_modes: Sequence[str] = ("joint", "separate", "direct")
    num_folds: int = 4
    fold_split: str = "city"
    cross_model: Sequence[str] | None = ("deeplabv2", "fcn8")
    mc_samples: int = 50
    vae_shape: Sequence[int] = (64, 128)
    save_pixel_scores: bool = True
    num_bins: int = 1 << 16
    figure_cases: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.segmenters = tuple(self.segmenters)
        self.comparator_modes = tuple(self.comparator_modes)
        self.vae_shape = tuple(int(v) for v in self.vae_shape)
        self.cross_model = tuple(self.cross_model) if self.cross_model else None
        if self.fold_split not in ("city", "seeded"):
            raise SynthCPInputError(f"fold_split must be 'city' or 'seeded', got {self.fold_split!r}")
        if int(self.num_folds) < 2:
            raise SynthCPInputError(f"num_folds must be at least 2, got {self.num_folds}")
        bad = [m for m in self.comparator_modes if m not in MODE_NAMES]
        if bad:
            raise SynthCPInputError(f"comparator_modes {bad} unknown; choose from {', '.join(MODE_NAMES)}")

    @property
    def num_classes(self) -> int:
        return len(CITYSCAPES_CLASSES)

    @property
    def ignore_index(self) -> int:
        return IGNORE

    def cv_dir(self, name: str) -> Any:
        return self.out / "crossval" / name


def _factories(segmenters: Mapping[str, Factory], study: CityscapesStudy) -> dict[str, Factory]:
    missing = [s for s in study.segmenters if s not in segmenters]
    if missing:
        raise SynthCPInputError(f"segmenters {missing} have no factory in the config's 'segmenters' mapping")
    return {s: segmenters[s] for s in study.segmenters}


def _true_iou(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class IoU ``(C,)`` of one label map ``(H, W)`` (NaN: class absent from both; ignore pixels excluded)."""
    return per_class_quality(pred[None], label[None], num_classes, "iou", ignore_index=IGNORE)[0].cpu().numpy()


# ================================================================================================================
@study_stage("prepare")
def prepare(study: CityscapesStudy) -> dict:
    """Check the Cityscapes folder, cache train / val at ``image_size``, make the K folds of the training split.

    Writes ``prepare/cases.json`` = ``{"train": [records], "val": [records], "folds": [[case, ...], ...]}``.
    """
    from synthcp3d.engines.crossval import make_folds

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


@study_stage("train_segmenter", training=True)
def train_segmenter(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
) -> dict:
    """Every segmenter on the whole training split -> ``models/segmenter_<name>.pt`` (finished ones are kept)."""
    train = study.cases()["train"]
    for name, factory in _factories(segmenters, study).items():
        fit_segmenter(
            study,
            factory,
            train,
            study.stage_dir("train_segmenter") / f"checkpoints_{name}",
            study.models / f"segmenter_{name}.pt",
            iterations,
            batch_size,
            lr,
            seed=int(study.seed),
        )
        save_network_spec(study, f"segmenter_{name}", factory)
    return {"num_train": len(train), "iterations": int(iterations)}


@torch.no_grad()
def _mc_feature(study: CityscapesStudy, net: torch.nn.Module, x: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """MC-Dropout image-level feature ``(C,)``: mean predictive entropy inside each predicted class region."""
    from synthcp3d.scoring.mc_dropout import mc_dropout_probs, mean_entropy_per_class

    _, entropy = mc_dropout_probs(net, x, samples=int(study.mc_samples))
    return mean_entropy_per_class(entropy, pred, study.num_classes)[0].cpu().numpy()


@study_stage("crossval", training=True)
def crossval(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
) -> dict:
    """K-fold CV predictions of every segmenter on the training split (the comparators' training data).

    Per segmenter ``name``: the core's `run_crossval` layout in ``crossval/<name>/`` (PNG label maps), then
    ``crossval/<name>/cases.json`` (per case: fold, prediction path, true per-class IoU, MC-Dropout feature) and the
    MC-Dropout regressor fitted on them -> ``models/mc_dropout_<name>.json``. Finished folds are skipped.
    """
    from synthcp3d.engines.crossval import run_crossval

    meta = study.cases()
    info: dict[str, Any] = {"num_folds": len(meta["folds"]), "iterations": int(iterations), "cv_mean_iou": {}}
    for name, factory in _factories(segmenters, study).items():
        out = study.cv_dir(name)
        feature_dir = out / "mc_features"

        def train_fold(cases: list[dict], fold_dir: Any, factory: Factory = factory) -> torch.nn.Module:
            seed = int(study.seed) + 1 + int(fold_dir.name.split("_")[-1])
            return fit_segmenter(
                study,
                factory,
                cases,
                fold_dir / "checkpoints",
                fold_dir / "segmenter.pt",
                iterations,
                batch_size,
                lr,
                seed=seed,
            )

        def predict(net: torch.nn.Module, case: dict, feature_dir: Any = feature_dir) -> dict:
            x = image_tensor(load_cached(case["cache"])["image"])[None].to(study.torch_device)
            pred = segment(net, x)[0].argmax(1)
            feature = _mc_feature(study, net, x, pred)
            atomic_save_json(feature.tolist(), feature_dir / f"{case['case']}.json")
            return {"pred": pred[0].to(torch.uint8).cpu().numpy()}

        manifest = run_crossval(
            meta["train"],
            len(meta["folds"]),
            out,
            train_fold,
            predict,
            seed=int(study.seed),
            folds=meta["folds"],
            pred_format="png",
            progress=study.progress,
        )
        on_main_process(_cv_summary, study, name, manifest, info)
    return info


def _cv_summary(study: CityscapesStudy, name: str, manifest: list[dict], info: dict[str, Any]) -> None:
    """Segmenter ``name``'s CV records -> ``crossval/<name>/cases.json`` and its MC-Dropout regressors ->
    ``models/mc_dropout_<name>.json`` (per class) and ``models/mc_dropout_full_<name>.json`` (the authors'
    release's full linear map); its figures added to the stage's ``info``."""
    import warnings

    from synthcp3d.engines.crossval import load_prediction
    from synthcp3d.scoring.mc_dropout import MCDropoutFullLinearRegressor, MCDropoutQualityRegressor

    out, feature_dir = study.cv_dir(name), study.cv_dir(name) / "mc_features"
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
            "true_iou": _true_iou(pred, label, study.num_classes).tolist(),
            "mc_feature": json.loads((feature_dir / f"{case}.json").read_text()),
        }
    atomic_save_json(records, out / "cases.json")
    true = np.array([r["true_iou"] for r in records.values()], dtype=np.float64)
    feats = np.array([r["mc_feature"] for r in records.values()], dtype=np.float64)
    regressor, unfit = _fit_regressor(MCDropoutQualityRegressor(study.num_classes), feats, true)
    atomic_save_json(regressor.state_dict(), study.models / f"mc_dropout_{name}.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        full = MCDropoutFullLinearRegressor(study.num_classes).fit(feats, true)
    for k in np.flatnonzero(np.isnan(full.intercept)):  # a class whose IoU is never defined in CV: predict 0
        full.coef[k], full.intercept[k] = 0.0, 0.0
    atomic_save_json(full.state_dict(), study.models / f"mc_dropout_full_{name}.json")
    info.setdefault("mc_dropout_unfit_classes", {})[name] = unfit
    info["cv_mean_iou"][name] = nanmean(np.nanmean(true, axis=0))


def _fit_regressor(regressor: Any, feats: np.ndarray, true: np.ndarray) -> tuple[Any, list[int]]:
    """Fit a per-class linear regressor; a class with no usable (feature, IoU) pair in the CV predictions (the
    core regressor leaves it NaN) predicts its mean CV IoU, or 0 if it never occurs. Returns the unfit classes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        regressor.fit(feats, true)
    unfit = [int(k) for k in np.flatnonzero(np.isnan(regressor.coef))]
    for k in unfit:
        regressor.coef[k], regressor.intercept[k] = 0.0, nanmean(true[:, k]) or 0.0
    return regressor, unfit


def _cv_records(study: CityscapesStudy, name: str) -> dict[str, dict]:
    return json.loads(require_file(study.cv_dir(name) / "cases.json", "crossval").read_text())


@study_stage("train_comparator", training=True)
def train_comparator(
    study: CityscapesStudy,
    comparators: Mapping[str, Factory],
    generator: Factory,
    iterations: int = 20000,
    batch_size: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
) -> dict:
    """Per segmenter and mode: the comparator on ``(x, G(ŷ), ŷ)`` (``direct``: ``(x, ŷ)``) of the CV predictions,
    IoU + error-map targets (paper eq. 8) -> ``models/comparator_<segmenter>_<mode>.pt``. Same data, schedule and
    seed for every mode: Direct Prediction is the ablation without synthesis."""
    from synthcp3d.engines.checkpoint import save_weights
    from synthcp3d.engines.comparator import ComparatorTrainer
    from synthcp3d.engines.sampling import make_train_loader
    from synthcp3d.engines.training import run_training
    from monai.utils import set_determinism

    g = load_net(
        generator, require_file(study.models / "generator.pt", "train_synthesizer"), "generator", study.torch_device
    )
    out = study.stage_dir("train_comparator")
    for name in study.segmenters:
        records = list(_cv_records(study, name).values())
        for mode in study.comparator_modes:
            weights = study.models / f"comparator_{name}_{mode}.pt"
            if weights.is_file() and not study.force:
                continue
            set_determinism(seed=int(study.seed) + 200)
            net = study.prepare_network(comparators[mode]())
            loader = make_train_loader(
                case_dataset(records, with_pred=True),
                batch_size,
                seed=int(study.seed) + 200,
                num_workers=study.num_workers,
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
            trainer = ComparatorTrainer(
                study.torch_device,
                loader,
                net,
                optimizer,
                num_classes=study.num_classes,
                generator=g,
                metric="iou",
                ignore_index=IGNORE,
            )
            logger.info(f"comparator {mode} on the CV predictions of {name}")
            run_training(trainer, int(iterations), out / f"checkpoints_{name}_{mode}", **study.train_kwargs(iterations))
            save_weights({"comparator": net}, weights)
            save_network_spec(study, f"comparator_{name}_{mode}", comparators[mode])
    return {"iterations": int(iterations), "modes": list(study.comparator_modes)}


def _vae_input(label: torch.Tensor, study: CityscapesStudy) -> torch.Tensor:
    """Label map ``(B, H, W)`` -> one-hot ``(B, C, *vae_shape)`` (nearest resize).

    A ground-truth map's ignore pixels take the class of the nearest labelled pixel: the VAE then learns the shape
    prior of complete label maps, as the predicted masks it scores are complete (an "ignore" channel would be a
    class that never appears in them).
    """
    from scipy.ndimage import distance_transform_edt

    from synthcp3d.networks.synthesizer import one_hot_labels

    small = F.interpolate(label[:, None].float(), size=study.vae_shape, mode="nearest").long()[:, 0]
    ignored = (small == IGNORE).cpu().numpy()
    filled = small.cpu().numpy()
    for b in range(filled.shape[0]):
        if ignored[b].any() and not ignored[b].all():
            nearest = distance_transform_edt(ignored[b], return_distances=False, return_indices=True)
            filled[b] = filled[b][tuple(nearest)]
    filled[filled == IGNORE] = 0  # an image without a single labelled pixel
    return one_hot_labels(torch.as_tensor(filled, device=label.device), study.num_classes)


def _feature_channels(segmenter: torch.nn.Module, study: CityscapesStudy) -> int:
    w, h = study.image_size
    with torch.no_grad():
        return int(segmenter.forward_features(torch.zeros(1, 3, h, w, device=study.torch_device))[1].shape[1])


@study_stage("train_baselines", training=True)
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
) -> dict:
    """TCP heads (``models/confidnet_<name>.pt``) and the VAE alarm (``models/mask_vae.pt`` on ground-truth label maps,
    then per segmenter a linear per-class regressor from the VAE loss to IoU on its CV predictions ->
    ``models/vae_alarm_<name>.json``)."""
    from monai.data import Dataset
    from monai.utils import set_determinism

    from synthcp3d.engines.checkpoint import save_weights
    from synthcp3d.engines.distributed import unwrap
    from synthcp3d.engines.mask_vae import MaskVAETrainer
    from synthcp3d.engines.sampling import make_train_loader
    from synthcp3d.engines.training import run_training

    out = study.stage_dir("train_baselines")
    train = study.cases()["train"]
    dev = study.torch_device
    for name, factory in _factories(segmenters, study).items():
        seg = load_net(
            factory, require_file(study.models / f"segmenter_{name}.pt", "train_segmenter"), "segmenter", dev
        )
        head = partial(confidnet, feature_channels=_feature_channels(seg, study))  # width from the segmenter
        fit_confidnet(
            study,
            seg,
            head,
            train,
            out / f"checkpoints_tcp_{name}",
            study.models / f"confidnet_{name}.pt",
            iterations,
            batch_size,
            lr,
        )

    set_determinism(seed=int(study.seed) + 300)
    masks = [
        {
            "label": _vae_input(torch.as_tensor(load_cached(r["cache"])["label"].astype(np.int64)), study)[0].argmax(
                0, keepdim=True
            )
        }
        for r in train
    ]
    vae = study.prepare_network(mask_vae())
    loader = make_train_loader(Dataset(masks), batch_size, seed=int(study.seed) + 300, num_workers=study.num_workers)
    optimizer = torch.optim.Adam(vae.parameters(), lr=vae_lr)
    trainer = MaskVAETrainer(dev, loader, vae, optimizer, num_classes=study.num_classes, beta=vae_beta)
    run_training(trainer, int(iterations), out / "checkpoints_vae", **study.train_kwargs(iterations))
    save_weights({"vae": vae}, study.models / "mask_vae.pt")
    save_network_spec(study, "mask_vae", mask_vae)
    on_main_process(_fit_vae_regressors, study, unwrap(vae))
    return {"iterations": int(iterations), "num_train": len(train)}


def _fit_vae_regressors(study: CityscapesStudy, vae: torch.nn.Module) -> None:
    """Per segmenter: the VAE loss of its CV predictions -> IoU, a per-class linear regressor ->
    ``models/vae_alarm_<name>.json``."""
    from synthcp3d.engines.crossval import load_prediction
    from synthcp3d.scoring.regression import LinearQualityRegressor

    for name in study.segmenters:
        records = _cv_records(study, name)
        feats = np.stack(
            [
                _vae_feature(vae, torch.as_tensor(load_prediction(r["pred"]).astype(np.int64)), study)
                for r in records.values()
            ]
        )
        true = np.array([r["true_iou"] for r in records.values()], dtype=np.float64)
        regressor, _ = _fit_regressor(
            LinearQualityRegressor(study.num_classes, missing_feature_quality=0.0), feats, true
        )
        atomic_save_json(regressor.state_dict(), study.models / f"vae_alarm_{name}.json")


@torch.no_grad()
def _vae_feature(vae: torch.nn.Module, pred: torch.Tensor, study: CityscapesStudy) -> np.ndarray:
    """The VAE alarm's feature of a predicted mask ``(H, W)`` per class ``(C,)``: its VAE loss, as published (Liu et
    al.; see `synthcp3d.scoring.vae_alarm.per_class_vae_feature`)."""
    from synthcp3d.scoring.vae_alarm import per_class_vae_feature

    return per_class_vae_feature(vae, _vae_input(pred[None].to(study.torch_device), study), "loss")


# ================================================================================================================
@dataclass
class _Judges:
    """Everything that scores one segmenter's masks."""

    segmenter: torch.nn.Module
    comparators: dict[str, torch.nn.Module]  # Table-1 row name -> comparator
    confidnet: torch.nn.Module
    mc_regressor: Any
    mc_full: Any  # MC-Dropout's full linear map (the authors' release)
    vae_regressor: Any
    fold_segmenters: list[torch.nn.Module]  # the cross-validation folds' (pairwise-IoU ensemble); may be empty


def _load_judges(
    study: CityscapesStudy, name: str, comparator_source: str, segmenters, comparators, confidnet
) -> _Judges:
    from synthcp3d.scoring.mc_dropout import MCDropoutFullLinearRegressor, MCDropoutQualityRegressor
    from synthcp3d.scoring.regression import LinearQualityRegressor

    dev = study.torch_device
    seg = load_net(
        segmenters[name], require_file(study.models / f"segmenter_{name}.pt", "train_segmenter"), "segmenter", dev
    )
    comps = {
        MODE_NAMES[mode]: load_net(
            comparators[mode],
            require_file(study.models / f"comparator_{comparator_source}_{mode}.pt", "train_comparator"),
            "comparator",
            dev,
        )
        for mode in study.comparator_modes
    }
    head = load_net(
        partial(confidnet, feature_channels=_feature_channels(seg, study)),
        require_file(study.models / f"confidnet_{name}.pt", "train_baselines"),
        "confidnet",
        dev,
    )
    mc = MCDropoutQualityRegressor.from_state_dict(
        json.loads(require_file(study.models / f"mc_dropout_{name}.json", "crossval").read_text())
    )
    vr = LinearQualityRegressor.from_state_dict(
        json.loads(require_file(study.models / f"vae_alarm_{name}.json", "train_baselines").read_text())
    )
    folds = sorted(study.cv_dir(name).glob("fold_*/segmenter.pt"), key=lambda p: int(p.parent.name.split("_")[-1]))
    fold_nets = [load_net(segmenters[name], path, "segmenter", dev) for path in folds]
    mc_full = MCDropoutFullLinearRegressor.from_state_dict(
        json.loads(require_file(study.models / f"mc_dropout_full_{name}.json", "crossval").read_text())
    )
    return _Judges(seg, comps, head, mc, mc_full, vr, fold_nets)


def _evaluate_segmenter(
    study: CityscapesStudy,
    judges: _Judges,
    generator: torch.nn.Module,
    vae: torch.nn.Module,
    val: list,
    out: Any,
    baselines: bool,
    figure: bool,
) -> tuple[dict, dict, np.ndarray, list]:
    """Score every val image of one segmenter; returns (pixel tables by reduction, image-level predictions by method,
    true IoU (N, C), Fig. 5 rows)."""
    from synthcp3d.metrics import StreamingPixelFailureMetrics
    from synthcp3d.networks.synthesizer import one_hot_labels
    from synthcp3d.scoring import run_scorer
    from synthcp3d.scoring.ensemble import pairwise_agreement
    from synthcp3d.scoring.mc_dropout import mean_entropy_per_class
    from synthcp3d.targets import not_predicted_is_zero

    dev = study.torch_device
    methods = (["MSP", "MC-Dropout", "TCP"] if baselines else []) + list(judges.comparators)
    meters = {
        (m, r): StreamingPixelFailureMetrics(r, num_bins=study.num_bins, device=dev)
        for m in methods
        for r in REDUCTIONS
    }
    pairwise = "Pairwise IoU (fold ensemble)"
    image_preds: dict[str, list[np.ndarray]] = {
        m: [] for m in IMAGE_METHODS
        if m in judges.comparators or (baselines and (m != pairwise or judges.fold_segmenters))
    }
    true_rows, fig_rows = [], []
    for item in tqdm(val, desc=f"evaluate {out.name}", disable=not study.progress, unit="image"):
        case = load_cached(item["cache"])
        x = image_tensor(case["image"])[None].to(dev)
        label = torch.as_tensor(case["label"][0].astype(np.int64), device=dev)
        logits, _ = segment(judges.segmenter, x)
        probs = torch.softmax(logits.float(), dim=1)
        pred = probs.argmax(1)
        synth = synthesize(generator, pred, study.num_classes)
        ignore = label == IGNORE
        error = (pred[0] != label) & ~ignore
        true_rows.append(_true_iou(pred[0], label, study.num_classes))
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
            mc = run_scorer("mc_dropout", inputs, samples=int(study.mc_samples))
            maps["MC-Dropout"] = mc.pixel_error
            maps["TCP"] = run_scorer("tcp", inputs).pixel_error
            image_preds["MC-Dropout"].append(mc.quality[0].cpu().numpy())
            entropy = mean_entropy_per_class(mc.pixel_error, pred, study.num_classes)  # as in crossval's features
            image_preds["MC-Dropout (full linear map)"].append(judges.mc_full.predict(entropy)[0].cpu().numpy())
            vae_q = judges.vae_regressor.predict(_vae_feature(vae, pred[0], study)[None])
            image_preds["VAE alarm"].append(np.asarray(vae_q, dtype=np.float64)[0])
        if pairwise in image_preds:  # Zenk et al. 2025: mean pairwise IoU of the judged mask and the fold models'
            members = [pred] + [segment(net, x)[0].argmax(1) for net in judges.fold_segmenters]
            agreement = pairwise_agreement(members, study.num_classes, "iou")[0].cpu().numpy()
            image_preds[pairwise].append(not_predicted_is_zero(agreement, pred.cpu().numpy()))
        for row, comparator in judges.comparators.items():
            # the registry names Direct Prediction's network "direct_comparator", SynthCP's "comparator"
            scorer, key = ("direct", "direct_comparator") if row == "Direct Prediction" else ("synthcp", "comparator")
            result = run_scorer(scorer, {**inputs, key: comparator})
            maps[row] = result.pixel_error
            image_preds[row].append(result.quality[0].cpu().numpy())
        for m, s in maps.items():
            for r in REDUCTIONS:
                meters[(m, r)].update(s[0], error, ignore)
        if study.save_pixel_scores:
            with atomic_path(out / "scores" / f"{item['case']}.npz") as tmp, open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    error=error.cpu().numpy(),
                    ignore=ignore.cpu().numpy(),
                    **{m: s[0].float().cpu().numpy() for m, s in maps.items()},
                )
        if figure and len(fig_rows) < study.figure_cases and "SynthCP-joint" in maps:
            fig_rows.append(
                [
                    (to_display_image(case["image"]), "image", None, None),
                    (train_ids_to_color(case["label"][0]), "label", None, None),
                    (train_ids_to_color(pred[0].cpu().numpy()), "prediction", None, None),
                    (to_display_image(synth[0].cpu().numpy()), "synthesized G(ŷ)", None, None),
                    (
                        np.where(ignore.cpu().numpy(), 0.5, error.float().cpu().numpy()),
                        "true errors",
                        "gray",
                        (0.0, 1.0),
                    ),
                    (maps["SynthCP-joint"][0].cpu().numpy(), "predicted errors (SynthCP-joint), true ones outlined",
                     "gray", (0.0, 1.0), error.cpu().numpy()),
                ]
            )
    tables = {r: {m: meters[(m, r)].compute() for m in methods} for r in REDUCTIONS}
    preds = {m: np.array(v, dtype=np.float64) for m, v in image_preds.items()}
    return tables, preds, np.array(true_rows, dtype=np.float64), fig_rows


@study_stage("evaluate")
def evaluate(
    study: CityscapesStudy,
    segmenters: Mapping[str, Factory],
    generator: Factory,
    comparators: Mapping[str, Factory],
    confidnet: Factory,
    mask_vae: Factory,
) -> dict:
    """Table 1 on the val split for every segmenter (+ the cross-model row) and Fig. 5.

    Writes ``evaluate/report.{md,json,csv}``, per segmenter ``evaluate/<name>/image_level.{md,csv,json}`` +
    ``per_case.csv`` (the core's `quality_report`: per-image predicted and true IoU) and
    ``evaluate/<name>/scores/<case>.npz`` (error, ignore and every method's error map), and ``evaluate/fig5.png``.
    """
    from synthcp3d.report import quality_report

    segmenters = _factories(segmenters, study)
    dev = study.torch_device
    g = load_net(generator, require_file(study.models / "generator.pt", "train_synthesizer"), "generator", dev)
    vae = load_net(mask_vae, require_file(study.models / "mask_vae.pt", "train_baselines"), "vae", dev)
    val = study.cases()["val"]
    out = study.stage_dir("evaluate")
    runs = [(name, name, f"{name}", True) for name in study.segmenters]
    if study.cross_model and all(s in study.segmenters for s in study.cross_model):
        source, target = study.cross_model
        runs.append((target, source, f"{target}_judged_by_{source}", False))
    pixel: dict[str, dict] = {}
    image: dict[str, dict] = {}
    fig_rows: list = []
    for name, source, key, baselines in runs:
        judges = _load_judges(study, name, source, segmenters, comparators, confidnet)
        run_dir = out / key
        run_dir.mkdir(parents=True, exist_ok=True)
        tables, preds, true, rows = _evaluate_segmenter(study, judges, g, vae, val, run_dir, baselines, not fig_rows)
        fig_rows = fig_rows or rows
        pixel[key] = tables
        report = quality_report(
            preds,
            true,
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
    markdown = _write_report(study, pixel, image, runs, len(val), out)
    print(markdown, flush=True)
    print(
        f"report: {out / 'report.md'} (+ .json, .csv); per-image scores: {out}/<segmenter>/; figure: {out / 'fig5.png'}"
    )
    return {"pixel": pixel, "report": str(out / "report.md")}


def _image_table(report: Any) -> dict[str, dict[str, float]]:
    """The class-averaged row of the core report (its first table)."""
    return next(iter(report.tables.values())) if report.tables else {}


def _write_report(study: CityscapesStudy, pixel: dict, image: dict, runs: list, num_val: int, out: Any) -> str:
    from synthcp3d.report import METRIC_COLUMNS

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
        "",
    ]
    for name, source, key, _ in runs:
        title = key if name == source else f"{name} masks judged by comparators trained on {source} (cross-model)"
        lines += [f"## {title} — image level", ""]
        rows = _image_table(image[key])
        cols = [(k, h) for k, h in METRIC_COLUMNS]
        lines += [metrics_markdown({m: rows[m] for m in IMAGE_METHODS if m in rows}, cols), ""]
        for reduction in REDUCTIONS:
            note = (
                "all val pixels pooled (streaming histograms)"
                if reduction == "pooled"
                else "per image, then the mean over images holding both error and correct pixels"
            )
            lines += [f"## {title} — pixel level, reduction `{reduction}`: {note}", ""]
            table = pixel[key][reduction]
            lines += [metrics_markdown({m: table[m] for m in PIXEL_METHODS if m in table}, PIXEL_COLUMNS), ""]
    markdown = "\n".join(lines)
    atomic_save_text(markdown, out / "report.md")
    atomic_save_json(
        {"pixel": pixel, "image": {k: v.tables for k, v in image.items()}, "settings": study.describe()},
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
