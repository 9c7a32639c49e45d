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
(labels > 0 of ``ŷ``), shifted to stay inside the volume; an empty prediction falls back to the volume centre
(counted in the report). Undefined DSC (tumour absent from both ground truth and prediction) is NaN: excluded from
the metrics and counted. True DSC is computed on the whole (preprocessed) volume; the comparator is trained on the
DSC inside its ROI (the two differ only by predictions outside the ROI).

A trained output folder is self-describing: ``models/settings.json`` (the study settings a trained model depends on:
preprocessing, geometry, class names; written by ``prepare``), ``models/networks.json`` (how each network is built,
plain JSON) and the weights. The DSC alarm (:mod:`synthcp3d.alarm`) loads it with :func:`load_study` and
:func:`load_network` and scores a volume with the same functions as ``evaluate``: :func:`segment_volume`,
:func:`roi_tensors`, :func:`vae_alarm_dsc` (:func:`vae_input` + :func:`vae_feature` + regressor) and
:func:`synthcp3d.scoring.ensemble.mean_ensemble`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, RandFlipd, Resize
from monai.utils import set_determinism
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError
from synthcp3d.evidence import quality_spread
from synthcp3d.roi import PancreasROICropd, RoiBox, crop_to_box, pancreas_roi, tight_box
from synthcp3d.scoring.ensemble import mean_ensemble
from synthcp3d.targets import per_class_quality
from synthcp3d.transforms import HU_RANGE, ct_preprocessing, load_preprocessed, segmenter_train_augmentation
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import (
    DONE,
    StudyBase,
    build_network,
    fit_synthesizer,
    load_network_spec,
    nanmean,
    require_file,
    save_network_spec,
    study_stage,
    write_csv_rows,
)

__all__ = [
    "PancreasStudy",
    "CLASS_NAMES",
    "METHODS",
    "ABLATIONS",
    "PIXEL_METHODS",
    "NETWORKS",
    "MODEL_SETTINGS",
    # stages, in order
    "prepare",
    "train_segmenter",
    "crossval",
    "train_synthesizer",
    "train_comparator",
    "train_vae_alarm",
    "evaluate",
    "inference",
    # a trained output folder, and scoring one volume (shared with the DSC alarm)
    "save_settings",
    "load_study",
    "save_network",
    "load_network",
    "load_regressor",
    "segment_volume",
    "roi_tensors",
    "vae_input",
    "vae_feature",
    "vae_alarm_dsc",
    "not_predicted_is_zero",
    "native_dsc",
    "to_native_grid",
    "segmenter_name",
    "SegmenterRecipe",
    "CaseScores",
]

logger = logging.getLogger(__name__)

CLASS_NAMES = ("background", "pancreas", "tumour")
PANCREAS, TUMOUR = 1, 2
#: Table 2 rows, in order.
METHODS = ("Direct Prediction", "MC-Dropout", "VAE alarm", "SynthCP", "SynthCP + VAE alarm")
#: SynthCP's comparator with another x̂ than G(ŷ): does it use the synthesis?
ABLATIONS = ("SynthCP, x̂ = class-mean painter", "SynthCP, x̂ = blank")
#: error maps scored voxel by voxel (+ SynthCP's with x̂ replaced, :data:`ABLATIONS`)
PIXEL_METHODS = ("SynthCP", "Direct Prediction", "MC-Dropout entropy", "MSP (1 - max softmax)", *ABLATIONS)
#: trained network -> (weights file in ``models/``, key inside it, stage that writes it)
NETWORKS: dict[str, tuple[str, str, str]] = {
    "segmenter": ("segmenter.pt", "segmenter", "train_segmenter"),
    "generator": ("generator.pt", "generator", "train_synthesizer"),
    "comparator_synthcp": ("comparator_synthcp.pt", "comparator", "train_comparator"),
    "comparator_direct": ("comparator_direct.pt", "comparator", "train_comparator"),
    "mask_vae": ("mask_vae.pt", "vae", "train_vae_alarm"),
}
#: trained regressor -> (file in ``models/``, stage that writes it)
REGRESSORS: dict[str, tuple[str, str]] = {
    "mc_dropout": ("mc_dropout_regressor.json", "crossval"),
    "vae_alarm": ("vae_alarm_regressor.json", "train_vae_alarm"),
}
#: the settings a trained model depends on, recorded in ``models/settings.json`` (see :func:`save_settings`)
MODEL_SETTINGS = (
    "spacing", "hu_range", "patch_size", "roi_size", "vae_shape", "mc_samples", "sw_roi_size", "sw_batch_size",
    "sw_overlap", "class_names", "settings_name",
)
Factory = Callable[..., torch.nn.Module]


@dataclass
class PancreasStudy(StudyBase):
    """Settings shared by every stage (``configs/common.yaml``); paths, device, seed, ``force``, ``progress`` and
    ``settings_name`` (and the done-markers) come from `StudyBase`.

    Attributes:
        dataset_dir: the MSD ``Task07_Pancreas`` folder or its parent.
        spacing: target voxel spacing (mm) of the preprocessed space.
        hu_range: HU window mapped to [-1, 1].
        patch_size: segmenter training patch = sliding-window size (AH-Net: first two divisible by
            ``2 ** (psp_block_num + 3)``, last by 32).
        roi_size: pancreas crop of the synthesizer, the comparator and MC-Dropout (divisible by the generator's
            ``2 ** num_upsamples``).
        vae_shape: the mask VAE's input shape (tight crop of labels > 0, resized, nearest).
        num_folds: K of the cross-validation on the training part (paper: 4).
        train_fraction: share of the labelled cases used for training (paper: 200 / 281).
        max_cases: use only the first N labelled cases (None: all) — for quick checks.
        mc_samples: MC-Dropout passes (paper: 50).
        sw_roi_size: window of whole-volume inference (default ``patch_size``; AH-Net is fully convolutional, so
            a larger window of valid size is faster on CPU).
        sw_batch_size, sw_overlap: sliding-window inference settings.
        cache_rate: share of training volumes cached in memory (MONAI ``CacheDataset``).
    """

    task: str = "Task07_Pancreas"
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    hu_range: Sequence[float] = HU_RANGE
    patch_size: Sequence[int] = (128, 128, 64)
    roi_size: Sequence[int] = (96, 96, 64)
    vae_shape: Sequence[int] = (64, 64, 64)
    num_folds: int = 4
    train_fraction: float = 200 / 281
    max_cases: int | None = None
    mc_samples: int = 50
    sw_roi_size: Sequence[int] | None = None
    sw_batch_size: int = 2
    sw_overlap: float = 0.25
    cache_rate: float = 1.0
    class_names: Sequence[str] = field(default=CLASS_NAMES)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.hu_range = tuple(float(h) for h in self.hu_range)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.roi_size = tuple(int(r) for r in self.roi_size)
        self.vae_shape = tuple(int(v) for v in self.vae_shape)
        self.sw_roi_size = tuple(int(v) for v in (self.sw_roi_size or self.patch_size))
        self.class_names = tuple(self.class_names)
        if len(self.patch_size) != 3 or len(self.roi_size) != 3 or len(self.spacing) != 3 or len(self.vae_shape) != 3:
            raise SynthCPInputError("spacing, patch_size, roi_size and vae_shape must each have 3 entries")
        if int(self.num_folds) < 2:
            raise SynthCPInputError(f"num_folds must be at least 2, got {self.num_folds}")
        if not 0.0 < float(self.train_fraction) < 1.0:
            raise SynthCPInputError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocessing(self, label_key: str | None = "label", load: bool = True) -> Compose:
        """The study's CT preprocessing (RAS, ``spacing``, ``hu_range`` -> [-1, 1]); see `ct_preprocessing`."""
        return ct_preprocessing(self.spacing, hu_range=self.hu_range, label_key=label_key, load=load)

    # ---- cases ---------------------------------------------------------------------------------------------------
    def test_folder(self) -> Path:
        """The data set's unlabelled ``imagesTs`` folder: the default input of ``inference``."""
        root = Path(self.dataset_dir)
        for candidate in (root / "imagesTs", root / self.task / "imagesTs"):
            if candidate.is_dir():
                return candidate
        raise SynthCPInputError(f"no imagesTs folder under {root}: give input_dir (a folder of NIfTI volumes)")

    def cases(self) -> dict:
        return json.loads(require_file(self.out / "prepare" / "cases.json", "prepare").read_text())


def _nib_load(path: str | Path) -> Any:
    import nibabel as nib

    return nib.load(str(path))


def _load_volume(path: str | Path) -> np.ndarray:
    return np.asarray(_nib_load(path).dataobj)


def _save_volume(array: np.ndarray, reference_path: str | Path, path: Path) -> Path:
    import nibabel as nib

    from synthcp3d.data.volume_io import save_like

    return save_like(array.astype(np.uint8), nib.load(str(reference_path)).affine, path)


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
# a trained output folder: settings, networks, regressors
# ================================================================================================================
def save_settings(study: PancreasStudy) -> Path:
    """Write :data:`MODEL_SETTINGS` of ``study`` to ``models/settings.json`` (atomic); :func:`load_study` reads it."""
    described = study.describe()
    return atomic_save_json({k: described[k] for k in MODEL_SETTINGS}, study.models / "settings.json")


def load_study(folder: str | Path, device: str | torch.device = "cpu") -> PancreasStudy:
    """The study of a trained output folder (its ``models/settings.json``), for inference on ``device``.

    Raises:
        SynthCPInputError: the settings are missing, unreadable or invalid.
    """
    path = require_file(Path(folder) / "models" / "settings.json", "prepare")
    try:
        settings = json.loads(path.read_text())
        return PancreasStudy(
            **{k: settings[k] for k in MODEL_SETTINGS if k in settings},
            dataset_dir=str(folder), output_dir=str(folder), device=str(device), progress=False,
        )
    except (OSError, ValueError, TypeError) as err:  # SynthCPInputError (a ValueError) included
        raise SynthCPInputError(f"settings file {path} is unusable ({str(err).splitlines()[0]})") from None


def save_network(study: PancreasStudy, name: str, net: torch.nn.Module, factory: Factory) -> None:
    """Save the weights of network ``name`` (:data:`NETWORKS`) and record how it is built in ``networks.json``."""
    from synthcp3d.engines.checkpoint import save_weights

    filename, key, _ = NETWORKS[name]
    save_weights({key: net}, study.models / filename)
    save_network_spec(study, name, factory)


def load_network(study: PancreasStudy, name: str, factory: Factory | None = None) -> torch.nn.Module:
    """Network ``name`` (:data:`NETWORKS`) with its trained weights, in eval mode on the study's device.

    Built with ``factory`` (the bundle config's) or, without it, from ``models/networks.json``.

    Raises:
        SynthCPInputError: spec or weights absent, a class count other than the study's, weights that do not fit.
    """
    from synthcp3d.engines.checkpoint import load_weights

    filename, key, stage = NETWORKS[name]
    if factory is not None:
        spec = dict(getattr(factory, "keywords", {}))
    else:
        spec = load_network_spec(study.models, name, stage)
    num_classes = spec.get("num_classes")
    if num_classes is not None and int(num_classes) != study.num_classes:
        raise SynthCPInputError(
            f"label count differs: network {name!r} has {num_classes} classes, the study's labels are "
            f"{list(study.class_names)}"
        )
    weights = study.models / filename
    if not weights.is_file():
        raise SynthCPInputError(f"weights {weights} are absent: run the {stage} stage first")
    net = factory() if factory is not None else build_network(spec, name)
    try:
        load_weights({key: net}, weights)
    except SynthCPInputError:
        raise
    except Exception as err:  # noqa: BLE001 - size mismatches (RuntimeError), truncated files (EOFError, pickle)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthCPInputError(f"weights {weights} do not fit network {name!r} ({first})") from None
    return net.to(study.torch_device).eval()


def load_regressor(study: PancreasStudy, name: str) -> Any:
    """Regressor ``name`` (:data:`REGRESSORS`) from ``models/``, checked against the study's class count."""
    from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor
    from synthcp3d.scoring.regression import LinearQualityRegressor

    filename, stage = REGRESSORS[name]
    path = require_file(study.models / filename, stage)
    cls = MCDropoutQualityRegressor if name == "mc_dropout" else LinearQualityRegressor
    try:
        state = json.loads(path.read_text())
        regressor = cls.from_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SynthCPInputError(f"regressor {path} is unreadable ({err})") from None
    if name == "vae_alarm":  # which VAE feature it regresses (folders written before the loss feature: "dice")
        regressor.vae_feature = state.get("vae_feature", "dice")
    if regressor.num_outputs != study.num_classes:
        raise SynthCPInputError(
            f"label count differs: {path} predicts {regressor.num_outputs} classes, the study has {study.num_classes}"
        )
    return regressor


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
        source_tumour = int((np.asarray(_nib_load(item["label"]).dataobj) == TUMOUR).sum())
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
    """Train one segmenter on ``case_ids`` (resumable from ``out_dir`` checkpoints); save weights atomically."""
    from synthcp3d.engines.checkpoint import load_weights, save_weights
    from synthcp3d.engines.segmentation import SegmenterTrainer

    recipe = recipe if isinstance(recipe, SegmenterRecipe) else SegmenterRecipe(**dict(recipe or {}))
    set_determinism(seed=seed)
    net = segmenter().to(study.torch_device)
    if weights_path.is_file() and not study.force:
        load_weights({"segmenter": net}, weights_path)
        return net
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
    return net


def _sliding(study: PancreasStudy, roi_size: Sequence[int] | None = None) -> SlidingWindowInferer:
    return SlidingWindowInferer(
        roi_size=roi_size or study.sw_roi_size, sw_batch_size=study.sw_batch_size, overlap=study.sw_overlap, mode="gaussian"
    )


@torch.no_grad()
def segment_volume(study: PancreasStudy, net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole-volume sliding-window segmentation: ``image (H, W, D)`` in [-1, 1] -> label map ``(H, W, D)`` uint8."""
    net.eval()
    x = torch.as_tensor(image, dtype=torch.float32, device=study.torch_device)[None, None]
    logits = _sliding(study)(x, net)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


@study_stage("train_segmenter")
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
def roi_tensors(
    study: PancreasStudy, image: np.ndarray, pred: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, RoiBox]:
    """Crop ``image``/``pred`` ``(H, W, D)`` to the pancreas ROI of ``pred``: ``(1, 1, *roi)`` float, ``(1, *roi)`` long."""
    box = pancreas_roi(pred, study.roi_size)
    x = torch.as_tensor(crop_to_box(image, box, pad_value=-1.0), dtype=torch.float32)[None, None]
    p = torch.as_tensor(crop_to_box(pred.astype(np.int64), box, pad_value=0))[None]
    return x.to(study.torch_device), p.to(study.torch_device), box


def _mc_features(
    study: PancreasStudy, net: torch.nn.Module, x_roi: torch.Tensor, pred_roi: torch.Tensor
) -> tuple[np.ndarray, torch.Tensor]:
    """MC-Dropout feature per class: mean predictive entropy inside the predicted class region of the ROI ``(C,)``,
    and the entropy map ``(*roi)`` (the pixel-level MC-Dropout score)."""
    from synthcp3d.scoring.mc_dropout import mc_dropout_probs, mean_entropy_per_class

    inferer = _sliding(study, study.patch_size)

    class _Sliding(torch.nn.Module):  # MC-Dropout over the ROI through the sliding window (AH-Net's size rules)
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return inferer(x, self.inner)

    _, entropy = mc_dropout_probs(_Sliding(net), x_roi, samples=int(study.mc_samples))
    return mean_entropy_per_class(entropy, pred_roi, study.num_classes)[0].cpu().numpy(), entropy[0]


def to_native_grid(pred: np.ndarray, working_affine: np.ndarray, reference: Any) -> np.ndarray:
    """A label map on the working (preprocessed) grid resampled, nearest, onto ``reference``'s grid.

    Args:
        pred: ``(H, W, D)`` labels on the working grid.
        working_affine: its ``4x4`` affine (RAS, the study spacing).
        reference: a path to the case's own NIfTI (label or image) or a MetaTensor ``(1, X, Y, Z)``.

    Returns:
        ``(X, Y, Z)`` uint8 labels on the reference's own grid (orientation, spacing, extent).
    """
    from monai.data import MetaTensor
    from monai.transforms import LoadImage, ResampleToMatch

    if not isinstance(reference, MetaTensor):
        reference = LoadImage(image_only=True, ensure_channel_first=True)(str(reference))
    source = MetaTensor(torch.as_tensor(pred[None].astype(np.float32)), affine=torch.as_tensor(working_affine))
    native = ResampleToMatch(mode="nearest", padding_mode="zeros")(source, img_dst=reference)
    return np.asarray(native[0]).round().astype(np.uint8)


def native_dsc(study: PancreasStudy, pred: np.ndarray, case: Mapping) -> np.ndarray:
    """True DSC ``(C,)`` of a working-grid prediction, on the case's own label grid (NaN: class absent from both).

    The prediction is resampled onto the ground truth's grid (not the reverse), so resampling never deletes a
    ground-truth voxel: a tumour smaller than a working voxel still counts, and is missed.
    """
    from monai.transforms import LoadImage

    label = LoadImage(image_only=True, ensure_channel_first=True)(case["source_label"])
    native = to_native_grid(pred, _nib_load(case["image"]).affine, label)
    true = per_class_quality(
        torch.as_tensor(native[None].astype(np.int64)), torch.as_tensor(np.asarray(label[0]).astype(np.int64)[None]),
        study.num_classes, "dice",
    )
    return true[0].numpy()


def _case_record(study: PancreasStudy, net: torch.nn.Module, case: Mapping, pred: np.ndarray) -> dict:
    image = _load_volume(case["image"]).astype(np.float32)
    x_roi, p_roi, box = roi_tensors(study, image, pred)
    mc, _ = _mc_features(study, net, x_roi, p_roi)
    return {"true_dsc": native_dsc(study, pred, case).tolist(), "roi_box": box.to_dict(), "mc_feature": mc.tolist()}


@study_stage("crossval")
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
    from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor

    meta = study.cases()
    folds, cases = meta["folds"], meta["cases"]
    out = study.stage_dir("crossval")
    records: dict[str, dict] = {}
    for i, held_out in enumerate(folds):
        fold_dir = out / f"fold_{i}"
        fold_file = fold_dir / "cases.json"
        if fold_file.is_file() and not study.force:
            records.update(json.loads(fold_file.read_text()))
            continue
        train_ids = [c for j, f in enumerate(folds) if j != i for c in f]
        logger.info(f"crossval fold {i + 1}/{len(folds)}: train on {len(train_ids)}, predict {len(held_out)}")
        net = _fit_segmenter(
            study, segmenter, train_ids, fold_dir / "checkpoints", fold_dir / "segmenter.pt",
            iterations, batch_size, num_samples, lr, seed=int(study.seed) + 1 + i, recipe=recipe,
        )
        fold_records = {}
        for case_id in tqdm(held_out, desc=f"fold {i} predict", disable=not study.progress):
            case = cases[case_id]
            pred = segment_volume(study, net, _load_volume(case["image"]).astype(np.float32))
            pred_path = _save_volume(pred, case["image"], out / "predictions" / f"{case_id}_pred.nii.gz")
            record = _case_record(study, net, case, pred)
            fold_records[case_id] = {
                "fold": i, "image": case["image"], "label": case["label"], "pred": str(pred_path),
                "train_cases": len(train_ids), **record,
            }
        atomic_save_json(fold_records, fold_file)  # the fold's completion marker
        records.update(fold_records)
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


@study_stage("train_synthesizer")
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
    from synthcp3d.scoring.synthesis import ClassMeanPainter

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
    painter = ClassMeanPainter(study.num_classes).fit((d["image"], d["label"]) for d in dataset)
    atomic_save_json(painter.state_dict(), study.models / "painter.json")
    return {"iterations": int(iterations), "train_roi_l1": _synthesis_l1(study, g, dataset)}


def load_painter(study: PancreasStudy) -> Any:
    """The class-mean painter of ``models/painter.json`` (written by ``train_synthesizer``)."""
    from synthcp3d.scoring.synthesis import ClassMeanPainter

    path = require_file(study.models / "painter.json", "train_synthesizer")
    try:
        return ClassMeanPainter.from_state_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SynthCPInputError(f"painter {path} is unreadable ({err})") from None


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
@study_stage("train_comparator")
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
) -> dict:
    """Train SynthCP's comparator on ``(x, G(ŷ), ŷ)`` and Direct Prediction on ``(x, ŷ)``, both on the CV predictions.

    Same data, same schedule, same seed for both: Direct Prediction is the ablation without synthesis.
    ``quality_loss``: ``"l1"`` (paper eq. 8) or ``"bce"`` (see `comparator_loss`).
    """
    from functools import partial

    from synthcp3d.engines.comparator import ComparatorTrainer
    from synthcp3d.networks.comparator import comparator_loss

    records = _cv_records(study)
    items = [{"image": r["image"], "label": r["label"], "pred": r["pred"]} for r in records.values()]
    dataset = _roi_pair_dataset(study, items, "pred", jitter, ("image", "label", "pred"))
    g = load_network(study, "generator", generator)
    for name, factory in (("comparator_synthcp", comparator), ("comparator_direct", direct)):
        if (study.models / NETWORKS[name][0]).is_file() and not study.force:
            continue
        _set_seed(study, 200)
        net = factory().to(study.torch_device)
        loader = _loader(study, dataset, batch_size, int(study.seed) + 200)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
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
def vae_input(study: PancreasStudy, mask: np.ndarray, margin: int = 2) -> torch.Tensor:
    """Tight crop of ``mask > 0`` (+ ``margin``) grown to a cube in millimetres (so the shape keeps its aspect
    ratio), resized (nearest) to ``vae_shape``, one-hot: ``(1, C, *vae_shape)``."""
    from synthcp3d.networks.synthesizer import one_hot_labels
    from synthcp3d.roi import roi_box

    tight = tight_box(mask, margin=margin)
    spacing = np.asarray(study.spacing, dtype=np.float64)
    extent_mm = float(max((b - a) * sp for a, b, sp in zip(tight.start, tight.stop, spacing)))
    size = [max(int(math.ceil(extent_mm / sp)), 1) for sp in spacing]
    centre = [(a + b - 1) / 2.0 for a, b in zip(tight.start, tight.stop)]
    box = roi_box(centre, size, mask.shape, tight.fallback)
    crop = torch.as_tensor(crop_to_box(mask.astype(np.int64), box)[None].astype(np.float32))
    resized = Resize(study.vae_shape, mode="nearest")(crop)
    labels = torch.as_tensor(resized).round().long()
    return one_hot_labels(labels, study.num_classes).to(study.torch_device)


def vae_feature(vae: torch.nn.Module, onehot: torch.Tensor, feature: str = "loss") -> np.ndarray:
    """The VAE alarm's feature of a mask ``(1, C, *vae_shape)``, one value per class ``(C,)``.

    ``"loss"`` (Liu et al., DESIGN.md): the VAE's loss on the mask (reconstruction + beta·KL), the same number in
    every column (each class's regressor maps it to that class's DSC). ``"dice"`` (a named variant): per-class Dice
    between the mask and its reconstruction (NaN: class absent from both).
    """
    from synthcp3d.scoring.vae_alarm import vae_alarm_feature

    if feature == "dice":
        return vae.reconstruction_dice(onehot)[0].cpu().numpy()
    loss = float(vae_alarm_feature(vae, onehot, feature="loss")[0])
    return np.full(onehot.shape[1], loss, dtype=np.float64)


def not_predicted_is_zero(quality: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Predicted DSC ``(C,)`` with 0 for every class absent from the segmentation ``pred``.

    Exact wherever the true DSC is defined (a class in the ground truth but not in the prediction has DSC 0), and
    applied to every method alike, so no method gets the rule's free points alone.
    """
    quality = np.array(quality, dtype=np.float64, copy=True)
    present = np.bincount(np.asarray(pred).ravel().astype(np.int64), minlength=quality.shape[0]) > 0
    quality[1:][~present[1 : quality.shape[0]]] = 0.0
    return quality


@torch.no_grad()
def vae_alarm_dsc(study: PancreasStudy, vae: torch.nn.Module, regressor: Any, pred: np.ndarray) -> np.ndarray:
    """The VAE alarm's predicted DSC ``(C,)`` of a segmentation ``pred (H, W, D)`` (:func:`vae_feature` regressed)."""
    feature = vae_feature(vae, vae_input(study, pred), getattr(regressor, "vae_feature", "loss"))
    return not_predicted_is_zero(regressor.predict(feature[None])[0].cpu().numpy(), pred)


@study_stage("train_vae_alarm")
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
    from synthcp3d.engines.mask_vae import MaskVAETrainer
    from synthcp3d.scoring.regression import LinearQualityRegressor

    if feature not in ("loss", "dice"):
        raise SynthCPInputError(f"VAE alarm feature must be 'loss' or 'dice', got {feature!r}")
    _set_seed(study, 300)
    meta = study.cases()
    masks = []
    for c in tqdm(meta["train"], desc="VAE masks", disable=not study.progress):
        onehot = vae_input(study, _load_volume(meta["cases"][c]["label"]))
        masks.append({"label": onehot.argmax(1).cpu()})  # (1, *vae_shape)
    dataset = Dataset(masks, RandFlipd("label", prob=0.5, spatial_axis=2))
    loader = _loader(study, dataset, batch_size, int(study.seed) + 300)
    vae = mask_vae().to(study.torch_device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    trainer = MaskVAETrainer(study.torch_device, loader, vae, optimizer, num_classes=study.num_classes, beta=beta)
    _train(study, trainer, iterations, study.stage_dir("train_vae_alarm") / "checkpoints")
    save_network(study, "mask_vae", vae, mask_vae)

    records = _cv_records(study)
    feats, true = [], []
    vae.eval()
    for r in tqdm(records.values(), desc="VAE features", disable=not study.progress):
        with torch.no_grad():
            feats.append(vae_feature(vae, vae_input(study, _load_volume(r["pred"])), feature))
        true.append(r["true_dsc"])
    feats_arr, true_arr = np.array(feats, dtype=np.float64), np.array(true, dtype=np.float64)
    regressor = LinearQualityRegressor(study.num_classes, missing_feature_quality=0.0).fit(feats_arr, true_arr)
    atomic_save_json({**regressor.state_dict(), "vae_feature": feature}, study.models / "vae_alarm_regressor.json")
    features = {c: f.tolist() for c, f in zip(records, feats_arr)}
    atomic_save_json(features, study.stage_dir("train_vae_alarm") / "cv_features.json")
    return {"iterations": int(iterations), "num_cv_cases": len(records), "feature": feature}


# ================================================================================================================
# scoring one case with every method (evaluate + inference)
# ================================================================================================================
@dataclass
class _Scorers:
    segmenter: torch.nn.Module
    generator: torch.nn.Module
    synthcp: torch.nn.Module
    direct: torch.nn.Module
    vae: torch.nn.Module
    mc_regressor: Any
    vae_regressor: Any
    painter: Any


def _load_scorers(
    study: PancreasStudy, segmenter: Factory, generator: Factory, comparator: Factory, direct: Factory, mask_vae: Factory
) -> _Scorers:
    """Every trained network and regressor, built with the bundle config's factories."""
    factories = {"segmenter": segmenter, "generator": generator, "comparator_synthcp": comparator,
                 "comparator_direct": direct, "mask_vae": mask_vae}
    nets = {name: load_network(study, name, factory) for name, factory in factories.items()}
    return _Scorers(
        nets["segmenter"], nets["generator"], nets["comparator_synthcp"], nets["comparator_direct"], nets["mask_vae"],
        load_regressor(study, "mc_dropout"), load_regressor(study, "vae_alarm"), load_painter(study),
    )


@dataclass
class CaseScores:
    """Every method's judgement of one segmentation.

    Attributes:
        quality: method (:data:`METHODS` + :data:`ABLATIONS`) -> predicted DSC ``(C,)``.
        error_maps: method (:data:`PIXEL_METHODS`) -> error score ``(*roi)`` (higher = more likely wrong).
        box: the ROI in the working volume.
        pred_roi: the segmentation on the ROI ``(*roi)``.
        synthesis: ``G(ŷ)`` on the ROI ``(*roi)``.
        image_roi: the image on the ROI ``(*roi)``.
        painted: the class-mean painter's image of ``ŷ`` on the ROI ``(*roi)``.
    """

    quality: dict[str, np.ndarray]
    error_maps: dict[str, np.ndarray]
    box: RoiBox
    pred_roi: np.ndarray
    synthesis: np.ndarray
    image_roi: np.ndarray
    painted: np.ndarray


@torch.no_grad()
def _score(study: PancreasStudy, nets: _Scorers, image: np.ndarray, pred: np.ndarray) -> CaseScores:
    """Every method's predicted DSC and error map for the segmentation ``pred`` of ``image`` (both ``(H, W, D)``).

    "Class not predicted -> DSC 0" (:func:`not_predicted_is_zero`) applies to every method. The ablations feed
    SynthCP's comparator the class-mean painter's image and a blank image in place of ``G(ŷ)``.
    """
    from synthcp3d.networks.synthesizer import one_hot_labels
    from synthcp3d.scoring.synthesis import blank_like

    x_roi, p_roi, box = roi_tensors(study, image, pred)
    onehot = one_hot_labels(p_roi, study.num_classes)
    synth = nets.generator(onehot)
    synthcp = nets.synthcp(x_roi, onehot, synth)
    direct = nets.direct(x_roi, onehot)
    mc_feat, entropy = _mc_features(study, nets.segmenter, x_roi, p_roi)
    painted = nets.painter(p_roi, seed=int(study.seed)).to(x_roi.device)
    ablated = {ABLATIONS[0]: nets.synthcp(x_roi, onehot, painted), ABLATIONS[1]: nets.synthcp(x_roi, onehot, blank_like(x_roi))}
    raw = {
        "Direct Prediction": direct["quality"][0],
        "MC-Dropout": nets.mc_regressor.predict(mc_feat[None])[0],
        "VAE alarm": torch.as_tensor(vae_alarm_dsc(study, nets.vae, nets.vae_regressor, pred)),
        "SynthCP": synthcp["quality"][0],
        **{name: out["quality"][0] for name, out in ablated.items()},
    }
    quality = {m: not_predicted_is_zero(q.float().cpu().numpy(), pred) for m, q in raw.items()}
    quality["SynthCP + VAE alarm"] = mean_ensemble(
        torch.as_tensor(quality["SynthCP"]), torch.as_tensor(quality["VAE alarm"])
    ).numpy()
    nets.segmenter.eval()
    probs = torch.softmax(_sliding(study, study.patch_size)(x_roi, nets.segmenter).float(), dim=1)
    error_maps = {
        "SynthCP": torch.sigmoid(synthcp["error_logits"][0, 0].float()),
        "Direct Prediction": torch.sigmoid(direct["error_logits"][0, 0].float()),
        "MC-Dropout entropy": entropy.float(),
        "MSP (1 - max softmax)": 1.0 - probs.max(1).values[0],
        **{name: torch.sigmoid(out["error_logits"][0, 0].float()) for name, out in ablated.items()},
    }
    return CaseScores(
        quality={m: quality[m] for m in (*METHODS, *ABLATIONS)},
        error_maps={m: v.cpu().numpy() for m, v in error_maps.items()},
        box=box,
        pred_roi=p_roi[0].cpu().numpy(),
        synthesis=synth[0, 0].float().cpu().numpy(),
        image_roi=x_roi[0, 0].cpu().numpy(),
        painted=painted[0, 0].cpu().numpy(),
    )


@torch.no_grad()
def _synthesis_quality(study: PancreasStudy, nets: _Scorers, image: np.ndarray, label: np.ndarray, seed: int) -> dict:
    """``G(y)`` and the painter's image vs the real crop, on the ground-truth ROI: synthesizer -> quality dict."""
    from synthcp3d.networks.synthesizer import one_hot_labels
    from synthcp3d.scoring.synthesis import synthesis_quality

    x_roi, y_roi, _ = roi_tensors(study, image, label)
    hu_per_unit = (study.hu_range[1] - study.hu_range[0]) / 2.0
    candidates = {
        "3D SPADE G(y)": nets.generator(one_hot_labels(y_roi, study.num_classes)),
        "class-mean painter": nets.painter(y_roi, seed=seed).to(x_roi.device),
    }
    return {
        name: synthesis_quality(img[0], x_roi[0], y_roi[0], study.class_names, scale=hu_per_unit)
        for name, img in candidates.items()
    }


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
    nets = _load_scorers(study, segmenter, generator, comparator, direct, mask_vae)
    out = study.stage_dir("evaluate")
    preds: dict[str, list[np.ndarray]] = {m: [] for m in (*METHODS, *ABLATIONS)}
    maps: dict[str, list[np.ndarray]] = {}
    errors: list[np.ndarray] = []
    synthesis: dict[str, list[dict]] = {}
    panels: list[dict] = []
    true_rows, fallbacks = [], []
    for k, case_id in enumerate(tqdm(meta["test"], desc="evaluate", disable=not study.progress)):
        case = meta["cases"][case_id]
        image = _load_volume(case["image"]).astype(np.float32)
        label = _load_volume(case["label"]).astype(np.int64)
        pred = segment_volume(study, nets.segmenter, image)
        _save_volume(pred, case["image"], out / "predictions" / f"{case_id}_pred.nii.gz")
        true_rows.append(native_dsc(study, pred, case))
        scores = _score(study, nets, image, pred)
        for m, q in scores.quality.items():
            preds[m].append(q)
        for m, v in scores.error_maps.items():
            maps.setdefault(m, []).append(v.ravel())
        label_roi = crop_to_box(label, scores.box, pad_value=0)
        errors.append((label_roi != scores.pred_roi).ravel())
        panels.append(_figure_panel(scores, label_roi, case_id, true_rows[-1]))
        for name, q in _synthesis_quality(study, nets, image, label, seed=int(study.seed) + k).items():
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
        f"crop: {list(study.roi_size)} voxels around the bounding-box centre of the predicted pancreas (labels > 0); "
        f"empty prediction -> volume centre: {len(fallbacks)} test case(s){' ' + str(fallbacks) if fallbacks else ''}.",
        f"spacing {list(study.spacing)} mm, HU window {list(study.hu_range)}, patch {list(study.patch_size)}, "
        f"MC-Dropout samples {study.mc_samples}; VAE alarm feature: {getattr(nets.vae_regressor, 'vae_feature', '?')}.",
        "a class absent from the segmentation is predicted DSC 0 by every method (exact where the DSC is defined).",
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


def segmenter_name(study: PancreasStudy, factory: Factory | None = None) -> str:
    """The judged segmenter's architecture, as the reports name it (e.g. ``ahnet``, ``unet``)."""
    spec = dict(getattr(factory, "keywords", {})) if factory is not None else {}
    if not spec:
        try:
            spec = load_network_spec(study.models, "segmenter", "train_segmenter")
        except SynthCPInputError:
            return "unknown"
    names = {"ahnet": "AH-Net", "unet": "UNet (MONAI BasicUNet)", "fcn8": "FCN-8", "deeplabv2": "DeepLab-v2"}
    return names.get(str(spec.get("name", "")).lower(), str(spec.get("name", "unknown")))


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

    Writes ``inference/{case}_seg.nii.gz`` on the input's own grid (the preprocessing inverted, nearest) and
    ``inference/predicted_dsc.csv`` / ``.json`` (every method's predicted pancreas and tumour DSC).
    """
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from synthcp3d.data.volume_io import save_like

    folder = Path(input_dir) if input_dir else study.test_folder()
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))
    if max_volumes:
        files = files[: int(max_volumes)]
    nets = _load_scorers(study, segmenter, generator, comparator, direct, mask_vae)
    preprocess = study.preprocessing(label_key=None)
    out = study.stage_dir("inference")
    rows = []
    for path in tqdm(files, desc="inference", disable=not study.progress):
        case_id = path.name.split(".nii")[0]
        data = preprocess({"image": str(path)})
        image = data["image"]
        pred = segment_volume(study, nets.segmenter, image[0].numpy())
        case_scores = _score(study, nets, image[0].numpy(), pred)
        scores, box = case_scores.quality, case_scores.box
        data["pred"] = MetaTensor(torch.as_tensor(pred[None].astype(np.float32)), meta=image.meta, applied_operations=image.applied_operations)
        inverted = Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=True)(data)["pred"]
        seg = inverted[0].numpy().round().astype(np.uint8)
        save_like(seg, inverted.affine.numpy(), out / f"{case_id}_seg.nii.gz")
        row = {"case": case_id, "input": str(path), "roi_fallback": box.fallback}
        for m, q in scores.items():
            row[f"{m}|pancreas"] = float(q[PANCREAS])
            row[f"{m}|tumour"] = float(q[TUMOUR])
        rows.append(row)
    write_csv_rows(rows, out / "predicted_dsc.csv")
    atomic_save_json(rows, out / "predicted_dsc.json")
    print(f"inference: {len(rows)} volume(s) from {folder}; segmentations and predicted DSC in {out}", flush=True)
    return {"num_volumes": len(rows), "input_dir": str(folder)}


