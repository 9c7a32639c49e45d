"""A trained pancreas model: settings, persistence, and scoring one case.

What a trained output folder of ``bundles/pancreas_ct_synthcp`` holds and how it is used, without any training
code: the study settings (:class:`PancreasStudy`, ``models/settings.json``), the networks (``models/networks.json``
+ weights) and regressors, and the per-volume functions shared by the ``evaluate`` and ``inference`` stages
(:mod:`synthcp3d.workflows.pancreas`) and the DSC alarm (:mod:`synthcp3d.alarm`): :func:`segment_volume`,
:func:`roi_tensors`, :func:`synthesize_and_compare` (SynthCP on one segmentation), :func:`vae_alarm_dsc`,
:func:`pairwise_dice_quality`, :func:`score_case` (every method on one case).

A trained output folder is self-describing: ``models/settings.json`` (the study settings a trained model depends on:
preprocessing, geometry, class names; written by ``prepare``), ``models/networks.json`` (how each network is built,
plain JSON) and the weights. :func:`load_study` and :func:`load_trained_models` (or :func:`load_network` and
:func:`load_regressor` one at a time) read it back.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, Resize

from synthcp3d.data.geometry import affine_of, resample_to_grid
from synthcp3d.errors import SynthCPInputError
from synthcp3d.roi import RoiBox, crop_to_box, pancreas_roi, tight_box
from synthcp3d.scoring.ensemble import mean_ensemble
from synthcp3d import targets
from synthcp3d.targets import per_class_quality
from synthcp3d.transforms import HU_RANGE, ct_preprocessing
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import StudyBase, build_network, load_network_spec, require_file, save_network_spec

__all__ = [
    "PancreasStudy",
    "CLASS_NAMES",
    "PANCREAS",
    "TUMOUR",
    "METHODS",
    "ABLATIONS",
    "PIXEL_METHODS",
    "NETWORKS",
    "REGRESSORS",
    "MODEL_SETTINGS",
    "Factory",
    # volumes
    "load_volume",
    "save_label_map",
    # a trained output folder
    "save_settings",
    "load_study",
    "save_network",
    "load_network",
    "load_regressor",
    "load_painter",
    "load_fold_segmenters",
    "fold_segmenter_paths",
    "FOLD_SEGMENTER_PREFIX",
    "segmenter_name",
    # one volume
    "segment_volume",
    "roi_tensors",
    "mc_features",
    "to_native_grid",
    "native_dsc",
    "vae_input",
    "not_predicted_is_zero",
    "vae_alarm_dsc",
    # every method on one case
    "TrainedModels",
    "load_trained_models",
    "CaseScores",
    "Comparison",
    "synthesize_and_compare",
    "pairwise_dice_quality",
    "score_case",
    "score_synthesis",
]

CLASS_NAMES = ("background", "pancreas", "tumour")
PANCREAS, TUMOUR = 1, 2
#: Table 2 rows, in order.
METHODS = (
    "Direct Prediction", "MC-Dropout", "VAE alarm", "SynthCP", "SynthCP + VAE alarm",
    "Pairwise Dice (fold ensemble)", "SynthCP + pairwise Dice",
)
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
#: ``timer(stage) -> context manager`` timing a named stage (the alarm's ``StageTimer`` is one)
Timer = Callable[[str], contextlib.AbstractContextManager]


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


def load_volume(path: str | Path) -> np.ndarray:
    """The voxel array of a NIfTI file, as stored."""
    return np.asarray(_nib_load(path).dataobj)


def save_label_map(array: np.ndarray, reference_path: str | Path, path: Path) -> Path:
    """Write a label map ``(H, W, D)`` as uint8 NIfTI with the affine of ``reference_path`` (atomic)."""
    import nibabel as nib

    from synthcp3d.data.volume_io import save_like

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


def save_network(study: PancreasStudy, name: str, net: torch.nn.Module, factory: Factory) -> None:
    """Save the weights of network ``name`` (:data:`NETWORKS`) and record how it is built in ``networks.json``."""
    from synthcp3d.engines.checkpoint import save_weights

    filename, key, _ = NETWORKS[name]
    save_weights({key: net}, study.models / filename)
    save_network_spec(study, name, factory)


def load_network(
    study: PancreasStudy, name: str, factory: Factory | None = None, weights: Path | None = None
) -> torch.nn.Module:
    """Network ``name`` (:data:`NETWORKS`) with its trained weights, in eval mode on the study's device.

    Built with ``factory`` (the bundle config's) or, without it, from ``models/networks.json``; the weights come
    from ``models/`` or from ``weights`` (e.g. a cross-validation fold's segmenter).

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
    weights = study.models / filename if weights is None else Path(weights)
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


def load_painter(study: PancreasStudy) -> Any:
    """The class-mean painter of ``models/painter.json`` (written by ``train_synthesizer``)."""
    from synthcp3d.scoring.synthesis import ClassMeanPainter

    path = require_file(study.models / "painter.json", "train_synthesizer")
    try:
        return ClassMeanPainter.from_state_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SynthCPInputError(f"painter {path} is unreadable ({err})") from None




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


# ================================================================================================================
# segmenting and cropping one volume
# ================================================================================================================
def _sliding(study: PancreasStudy, roi_size: Sequence[int] | None = None) -> SlidingWindowInferer:
    return SlidingWindowInferer(
        roi_size=roi_size or study.sw_roi_size, sw_batch_size=study.sw_batch_size, overlap=study.sw_overlap,
        mode="gaussian",
    )


@torch.no_grad()
def segment_volume(study: PancreasStudy, net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole-volume sliding-window segmentation: ``image (H, W, D)`` in [-1, 1] -> label map ``(H, W, D)`` uint8."""
    net.eval()
    x = torch.as_tensor(image, dtype=torch.float32, device=study.torch_device)[None, None]
    logits = _sliding(study)(x, net)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def roi_tensors(
    study: PancreasStudy, image: np.ndarray, pred: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, RoiBox]:
    """Crop ``image``/``pred`` ``(H, W, D)`` to the pancreas ROI of ``pred``: ``(1, 1, *roi)`` float,
    ``(1, *roi)`` long, and the box."""
    box = pancreas_roi(pred, study.roi_size)
    x = torch.as_tensor(crop_to_box(image, box, pad_value=-1.0), dtype=torch.float32)[None, None]
    p = torch.as_tensor(crop_to_box(pred.astype(np.int64), box, pad_value=0))[None]
    return x.to(study.torch_device), p.to(study.torch_device), box


def mc_features(
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


def _load_nifti(path: str | Path) -> Any:
    """A NIfTI file as a channel-first MetaTensor ``(1, X, Y, Z)`` with its affine. The reader is named: a default
    ``LoadImage`` instantiates every reader, and the DICOM one logs a warning each time (once per case here)."""
    from monai.transforms import LoadImage

    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path))


def to_native_grid(pred: np.ndarray, working_affine: np.ndarray, reference: Any) -> np.ndarray:
    """A label map on the working (preprocessed) grid resampled, nearest, onto ``reference``'s grid.

    The one way back to a user's grid (the inference stage and the alarm use the same `resample_to_grid`).

    Args:
        pred: ``(H, W, D)`` labels on the working grid.
        working_affine: its ``4x4`` affine (RAS, the study spacing).
        reference: a path to the case's own NIfTI (label or image) or a MetaTensor ``(1, X, Y, Z)``.

    Returns:
        ``(X, Y, Z)`` uint8 labels on the reference's own grid (orientation, spacing, extent).
    """
    from monai.data import MetaTensor

    if not isinstance(reference, MetaTensor):
        reference = _load_nifti(reference)
    native = resample_to_grid(pred, working_affine, affine_of(reference), tuple(reference.shape[1:]), "nearest")
    return np.rint(native).astype(np.uint8)


def native_dsc(study: PancreasStudy, pred: np.ndarray, case: Mapping) -> np.ndarray:
    """True DSC ``(C,)`` of a working-grid prediction, on the case's own label grid (NaN: class absent from both).

    The prediction is resampled onto the ground truth's grid (not the reverse), so resampling never deletes a
    ground-truth voxel: a tumour smaller than a working voxel still counts, and is missed.
    """
    label = _load_nifti(case["source_label"])
    native = to_native_grid(pred, _nib_load(case["image"]).affine, label)
    true = per_class_quality(
        torch.as_tensor(native[None].astype(np.int64)), torch.as_tensor(np.asarray(label[0]).astype(np.int64)[None]),
        study.num_classes, "dice",
    )
    return true[0].numpy()


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


def not_predicted_is_zero(quality: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Predicted DSC ``(C,)`` with 0 for every class but the background absent from ``pred`` (see
    `synthcp3d.targets.not_predicted_is_zero`), the rule every pancreas method gets."""
    return targets.not_predicted_is_zero(quality, pred, keep=(0,))


@torch.no_grad()
def vae_alarm_dsc(study: PancreasStudy, vae: torch.nn.Module, regressor: Any, pred: np.ndarray) -> np.ndarray:
    """The VAE alarm's predicted DSC ``(C,)`` of a segmentation ``pred (H, W, D)`` (its per-class feature regressed)."""
    from synthcp3d.scoring.vae_alarm import per_class_vae_feature

    feature = per_class_vae_feature(vae, vae_input(study, pred), getattr(regressor, "vae_feature", "loss"))
    return not_predicted_is_zero(regressor.predict(feature[None])[0].cpu().numpy(), pred)


# ================================================================================================================
# scoring one case with every method (evaluate + inference)
# ================================================================================================================
@dataclass
class TrainedModels:
    """Every trained network (eval mode, on the study's device) and regressor that :func:`score_case` uses.

    Attributes:
        segmenter: ``(B, 1, *spatial)`` -> logits ``(B, C, *spatial)``.
        generator: one-hot labels ``(B, C, *roi)`` -> ``G(ŷ)`` ``(B, 1, *roi)``.
        synthcp: SynthCP's comparator ``(x, one-hot ŷ, x̂)`` -> ``{"quality": (B, C), "error_logits": (B, 1, *roi)}``.
        direct: Direct Prediction's comparator ``(x, one-hot ŷ)`` -> the same outputs.
        vae: the mask VAE of the VAE alarm.
        mc_regressor: MC-Dropout feature ``(N, C)`` -> DSC ``(N, C)``.
        vae_regressor: VAE alarm feature ``(N, C)`` -> DSC ``(N, C)``.
        painter: the class-mean painter (``G``'s non-learned replacement).
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
        load_fold_segmenters(study, segmenter),
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


def pairwise_dice_quality(
    study: PancreasStudy, fold_segmenters: Sequence[torch.nn.Module], image: np.ndarray, pred: np.ndarray,
    timer: Timer | None = None,
) -> np.ndarray:
    """The pairwise-Dice baseline's predicted DSC ``(C,)`` of ``pred`` ``(H, W, D)``: the mean Dice over every pair
    of ensemble members, the members being the judged segmentation and each fold segmenter's of ``image``.

    Used as the predicted DSC directly, without a fitted map: every training case was seen by all fold models but
    one, so no pair of members is blind to it and a regressor fitted on the cross-validated cases would learn from
    inflated agreement. NaN everywhere without fold segmenters. ``timer``: see :func:`synthesize_and_compare`.
    """
    from synthcp3d.scoring.ensemble import pairwise_agreement

    if not fold_segmenters:
        return np.full(study.num_classes, np.nan)
    with (timer or _untimed)("pairwise"):
        members = [pred] + [segment_volume(study, net, image) for net in fold_segmenters]
        tensors = [torch.as_tensor(np.asarray(m, dtype=np.int64))[None] for m in members]
        return not_predicted_is_zero(pairwise_agreement(tensors, study.num_classes)[0].numpy(), pred)


@dataclass
class Comparison:
    """SynthCP on one segmentation: its ROI, ``x̂ = G(ŷ)`` and the comparator's outputs.

    Attributes:
        x_roi: the image on the ROI ``(1, 1, *roi)``; pred_roi: the segmentation ``(1, *roi)``; onehot: ``(1, C,
        *roi)``; box: the ROI in the volume; synthesis: ``G(ŷ)`` ``(1, 1, *roi)``; quality: predicted DSC ``(C,)``
        ("class not predicted -> 0" applied); error: error probability ``(*roi)``; outputs: the comparator's raw dict.
    """

    x_roi: torch.Tensor
    pred_roi: torch.Tensor
    onehot: torch.Tensor
    box: RoiBox
    synthesis: torch.Tensor
    quality: np.ndarray
    error: torch.Tensor
    outputs: dict[str, torch.Tensor]


def _untimed(_stage: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@torch.no_grad()
def synthesize_and_compare(
    study: PancreasStudy, generator: torch.nn.Module, comparator: torch.nn.Module, image: np.ndarray,
    pred: np.ndarray, timer: Timer | None = None,
) -> Comparison:
    """SynthCP's judgement of ``pred`` ``(H, W, D)`` of ``image`` ``(H, W, D)``: crop the ROI, synthesize, compare.

    The one implementation the evaluate stage (:func:`score_case`) and the DSC alarm share. ``timer``: a callable
    ``timer(stage) -> context manager`` (e.g. the alarm's ``StageTimer``) timing ``"synthesize"`` and ``"compare"``.
    """
    from synthcp3d.networks.synthesizer import one_hot_labels

    timer = timer or _untimed
    with timer("synthesize"):
        x_roi, p_roi, box = roi_tensors(study, image, pred)
        onehot = one_hot_labels(p_roi, study.num_classes)
        synth = generator(onehot)
    with timer("compare"):
        out = comparator(x_roi, onehot, synth)
        quality = not_predicted_is_zero(out["quality"][0].float().cpu().numpy(), pred)
        error = torch.sigmoid(out["error_logits"][0, 0].float())
    return Comparison(x_roi, p_roi, onehot, box, synth, quality, error, out)


@torch.no_grad()
def score_case(study: PancreasStudy, nets: TrainedModels, image: np.ndarray, pred: np.ndarray) -> CaseScores:
    """Every method's predicted DSC and error map for the segmentation ``pred`` of ``image`` (both ``(H, W, D)``).

    "Class not predicted -> DSC 0" (:func:`not_predicted_is_zero`) applies to every method. The ablations feed
    SynthCP's comparator the class-mean painter's image and a blank image in place of ``G(ŷ)``. The pairwise-Dice
    baseline is :func:`pairwise_dice_quality` (NaN without fold segmenters).
    """
    from synthcp3d.scoring.synthesis import blank_like

    judged = synthesize_and_compare(study, nets.generator, nets.synthcp, image, pred)
    x_roi, p_roi, onehot = judged.x_roi, judged.pred_roi, judged.onehot
    direct = nets.direct(x_roi, onehot)
    mc_feat, entropy = mc_features(study, nets.segmenter, x_roi, p_roi)
    painted = nets.painter(p_roi, seed=int(study.seed)).to(x_roi.device)
    ablated = {
        ABLATIONS[0]: nets.synthcp(x_roi, onehot, painted),
        ABLATIONS[1]: nets.synthcp(x_roi, onehot, blank_like(x_roi)),
    }
    raw = {
        "Direct Prediction": direct["quality"][0],
        "MC-Dropout": nets.mc_regressor.predict(mc_feat[None])[0],
        "VAE alarm": torch.as_tensor(vae_alarm_dsc(study, nets.vae, nets.vae_regressor, pred)),
        "SynthCP": torch.as_tensor(judged.quality),
        "Pairwise Dice (fold ensemble)": torch.as_tensor(
            pairwise_dice_quality(study, nets.fold_segmenters, image, pred)
        ),
        **{name: out["quality"][0] for name, out in ablated.items()},
    }
    quality = {m: not_predicted_is_zero(q.float().cpu().numpy(), pred) for m, q in raw.items()}
    ensembles = {"SynthCP + VAE alarm": "VAE alarm", "SynthCP + pairwise Dice": "Pairwise Dice (fold ensemble)"}
    for name, other in ensembles.items():
        quality[name] = mean_ensemble(torch.as_tensor(quality["SynthCP"]), torch.as_tensor(quality[other])).numpy()
    nets.segmenter.eval()
    probs = torch.softmax(_sliding(study, study.patch_size)(x_roi, nets.segmenter).float(), dim=1)
    error_maps = {
        "SynthCP": judged.error,
        "Direct Prediction": torch.sigmoid(direct["error_logits"][0, 0].float()),
        "MC-Dropout entropy": entropy.float(),
        "MSP (1 - max softmax)": 1.0 - probs.max(1).values[0],
        **{name: torch.sigmoid(out["error_logits"][0, 0].float()) for name, out in ablated.items()},
    }
    return CaseScores(
        quality={m: quality[m] for m in (*METHODS, *ABLATIONS)},
        error_maps={m: v.cpu().numpy() for m, v in error_maps.items()},
        box=judged.box,
        pred_roi=p_roi[0].cpu().numpy(),
        synthesis=judged.synthesis[0, 0].float().cpu().numpy(),
        image_roi=x_roi[0, 0].cpu().numpy(),
        painted=painted[0, 0].cpu().numpy(),
    )


@torch.no_grad()
def score_synthesis(
    study: PancreasStudy, nets: TrainedModels, image: np.ndarray, label: np.ndarray, seed: int
) -> dict:
    """``G(y)`` and the painter's image vs the real crop, on the ground-truth ROI of ``label``; ``image`` and
    ``label`` ``(H, W, D)``: synthesizer name -> quality dict (see `synthcp3d.scoring.synthesis.synthesis_quality`)."""
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
