"""A trained pancreas model: the study settings, and the networks and regressors of a trained output folder.

What a trained output folder of ``bundles/pancreas_ct_synthcp`` holds and how it is read back, without any training
code. A trained output folder is self-describing: ``models/settings.json`` (the study settings a trained model
depends on: preprocessing, geometry, class names; :class:`PancreasStudy`, written by ``prepare``),
``models/networks.json`` (how each network is built, plain JSON) and the weights and regressors. :func:`load_study`
and :func:`load_trained_models` (or :func:`load_network` and :func:`load_regressor` one at a time) read it back.

Scoring one case with the loaded model (segmenting, SynthCP's judgement, every method's predicted DSC) is
:mod:`synthcp3d.workflows.pancreas_scoring`. The ``evaluate`` and ``inference`` stages and the DSC alarm
(:mod:`synthcp3d.alarm`) share both modules, which hold no training code and import no stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose

from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.mc_dropout import MCDropoutQualityRegressor
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.scoring.synthesis import ClassMeanPainter
from synthcp3d.transforms import HU_RANGE, ct_preprocessing
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows import trained
from synthcp3d.workflows.common import StudyBase, require_file
from synthcp3d.workflows.trained import load_network_spec

__all__ = [
    "PancreasStudy",
    "CLASS_NAMES",
    "PANCREAS",
    "TUMOUR",
    "NETWORKS",
    "REGRESSORS",
    "MODEL_SETTINGS",
    "VAE_CROP_MARGIN",
    "Factory",
    # volumes
    "load_volume",
    "save_label_map",
    # a trained output folder
    "save_settings",
    "load_study",
    "load_network",
    "load_regressor",
    "load_painter",
    "load_fold_segmenters",
    "fold_segmenter_paths",
    "FOLD_SEGMENTER_PREFIX",
    "segmenter_name",
    "TrainedModels",
    "load_trained_models",
]

CLASS_NAMES = ("background", "pancreas", "tumour")
PANCREAS, TUMOUR = 1, 2
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
    "volume": ("volume_regressor.json", "crossval"),
}
#: the settings a trained model depends on, recorded in ``models/settings.json`` (see :func:`save_settings`)
MODEL_SETTINGS = (
    "spacing", "hu_range", "patch_size", "roi_size", "vae_shape", "mc_samples", "sw_roi_size", "sw_batch_size",
    "sw_overlap", "class_names", "settings_name",
)
#: the VAE alarm's crop margin (voxels around the mask) when its regressor records none (``train_vae_alarm``'s default)
VAE_CROP_MARGIN = 2
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
        sw_roi_size: window of whole-volume inference (default ``patch_size``). The networks are fully
            convolutional, but a segmenter with instance norm (the demo's UNet) normalises over the window: a window
            far larger than the training patches shifts those statistics and costs it tumour DSC.
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

    #: also run-time only: the share of volumes cached and the windows per network call change no result
    runtime_fields: ClassVar[tuple[str, ...]] = (*StudyBase.runtime_fields, "cache_rate", "sw_batch_size")
    # no stage_fields: `prepare` writes every setting to models/settings.json, which the alarm, `synthcp export` and
    # `BundlePredictor` read, so every setting counts for `prepare` (and, through its run id, for every stage)

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
        """``prepare/cases.json``, its paths below this study's folders (`StudyBase.resolve_paths`: a moved run)."""
        cases = json.loads(require_file(self.out / "prepare" / "cases.json", "prepare").read_text())
        return self.resolve_paths(cases, "prepare")


def _nib_load(path: str | Path) -> Any:
    return nib.load(str(path))


def load_volume(path: str | Path) -> np.ndarray:
    """The voxel array of a NIfTI file, as stored (not MONAI ``LoadImage``: it casts to float32 by default and
    wraps the array in a ``MetaTensor`` whose metadata these callers never read)."""
    return np.asarray(_nib_load(path).dataobj)


def save_label_map(array: np.ndarray, reference_path: str | Path, path: Path) -> Path:
    """Write a label map ``(H, W, D)`` as uint8 NIfTI with the affine of ``reference_path`` (atomic)."""
    return save_like(array.astype(np.uint8), nib.load(str(reference_path)).affine, path)


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


def load_network(
    study: PancreasStudy, name: str, factory: Factory | None = None, weights: Path | None = None
) -> torch.nn.Module:
    """Network ``name`` (:data:`NETWORKS`: its weights file, key and stage) with its trained weights, in eval mode on
    the study's device: `synthcp3d.workflows.trained.load_network` (built with ``factory``, the bundle config's, or
    from ``models/networks.json``; the weights from ``models/`` or from ``weights``, e.g. a cross-validation fold's
    segmenter).

    Raises:
        SynthCPInputError: spec or weights absent, a class count other than the study's, weights that do not fit.
    """
    filename, key, stage = NETWORKS[name]
    weights = study.models / filename if weights is None else weights
    return trained.load_network(study, name, key, stage, factory, weights)


#: where an exported bundle (``synthcp export``) keeps the folds' segmenters: ``models/segmenter_fold_{i}.pt``
FOLD_SEGMENTER_PREFIX = "segmenter_fold_"


def fold_segmenter_paths(study: PancreasStudy) -> list[Path]:
    """The weights of the cross-validation folds' segmenters, in fold order: a run's ``crossval/fold_<i>/segmenter.pt``,
    else an exported bundle's ``models/segmenter_fold_<i>.pt``; none when the folder holds neither."""
    def numbered(paths: Any, number: Callable[[Path], str]) -> list[Path]:
        return sorted((p for p in paths if number(p).isdigit()), key=lambda p: int(number(p)))

    paths = numbered((study.out / "crossval").glob("fold_*/segmenter.pt"), lambda p: p.parent.name[len("fold_"):])
    prefix = FOLD_SEGMENTER_PREFIX
    return paths or numbered(study.models.glob(f"{prefix}*.pt"), lambda p: p.stem[len(prefix):])


def load_fold_segmenters(study: PancreasStudy, factory: Factory | None = None) -> list[torch.nn.Module]:
    """The cross-validation folds' segmenters (:func:`fold_segmenter_paths`, in fold order); none when the folder
    holds none (e.g. a model exported from a run without them)."""
    return [load_network(study, "segmenter", factory, weights=path) for path in fold_segmenter_paths(study)]


def load_regressor(study: PancreasStudy, name: str) -> Any:
    """Regressor ``name`` (:data:`REGRESSORS`) from ``models/``, checked against the study's class count."""
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
        # the crop margin of its VAE's input (folders written before it was a setting: VAE_CROP_MARGIN)
        regressor.vae_crop_margin = int(state.get("vae_crop_margin", VAE_CROP_MARGIN))
    if regressor.num_outputs != study.num_classes:
        raise SynthCPInputError(
            f"label count differs: {path} predicts {regressor.num_outputs} classes, the study has {study.num_classes}"
        )
    return regressor


def load_painter(study: PancreasStudy) -> Any:
    """The class-mean painter of ``models/painter.json`` (written by ``train_synthesizer``)."""
    return ClassMeanPainter.load(study.models / "painter.json")


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


@dataclass
class TrainedModels:
    """Every trained network (eval mode, on the study's device) and regressor that
    :func:`~synthcp3d.workflows.pancreas_scoring.score_case` uses.

    Attributes:
        segmenter: ``(B, 1, *spatial)`` -> logits ``(B, C, *spatial)``.
        generator: one-hot labels ``(B, C, *roi)`` -> ``G(ŷ)`` ``(B, 1, *roi)``.
        synthcp: SynthCP's comparator ``(x, one-hot ŷ, x̂)`` -> ``{"quality": (B, C), "error_logits": (B, 1, *roi)}``.
        direct: Direct Prediction's comparator ``(x, one-hot ŷ)`` -> the same outputs.
        vae: the mask VAE of the VAE alarm.
        mc_regressor: MC-Dropout feature ``(N, C)`` -> DSC ``(N, C)``.
        vae_regressor: VAE alarm feature ``(N, C)`` -> DSC ``(N, C)``.
        painter: the class-mean painter (``G``'s non-learned replacement).
        volume_regressor: predicted-volume feature ``(N, C)`` -> DSC ``(N, C)`` (the label-only baseline).
        fold_segmenters: the cross-validation folds' segmenters, the other members of the pairwise-Dice ensemble.
    """

    segmenter: torch.nn.Module
    generator: torch.nn.Module
    synthcp: torch.nn.Module
    direct: torch.nn.Module
    vae: torch.nn.Module
    mc_regressor: Any
    vae_regressor: Any
    painter: Any
    volume_regressor: Any
    fold_segmenters: list[torch.nn.Module] = field(default_factory=list)


def load_trained_models(
    study: PancreasStudy,
    segmenter: Factory | None = None,
    generator: Factory | None = None,
    comparator: Factory | None = None,
    direct: Factory | None = None,
    mask_vae: Factory | None = None,
) -> TrainedModels:
    """Every trained network and regressor of ``study.models``; a network without a factory (the bundle config's)
    is built from ``models/networks.json`` (see :func:`load_network`)."""
    factories = {"segmenter": segmenter, "generator": generator, "comparator_synthcp": comparator,
                 "comparator_direct": direct, "mask_vae": mask_vae}
    nets = {name: load_network(study, name, factory) for name, factory in factories.items()}
    return TrainedModels(
        nets["segmenter"], nets["generator"], nets["comparator_synthcp"], nets["comparator_direct"], nets["mask_vae"],
        load_regressor(study, "mc_dropout"), load_regressor(study, "vae_alarm"), load_painter(study),
        load_regressor(study, "volume"), load_fold_segmenters(study, segmenter),
    )
