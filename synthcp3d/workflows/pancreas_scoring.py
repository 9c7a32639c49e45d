"""Scoring one case with a trained pancreas model: segment, crop, synthesize and compare, every method's DSC.

The per-volume functions that the ``evaluate`` and ``inference`` stages and the DSC alarm (:mod:`synthcp3d.alarm`)
share: :func:`segment_volume`, :func:`roi_tensors`, :func:`synthesize_and_compare` (SynthCP on one segmentation),
:func:`vae_alarm_dsc`, :func:`pairwise_dice_quality`, :func:`score_case` (every method on one case), and the true DSC
on a case's own label grid (:func:`native_dsc`). The trained networks and regressors come from
:mod:`synthcp3d.workflows.pancreas_model` (:func:`~synthcp3d.workflows.pancreas_model.load_trained_models`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import LoadImage, Resize

from synthcp3d import targets
from synthcp3d.data.geometry import affine_of, resample_to_grid
from synthcp3d.engines.inference import make_inferer, sliding_window_segment
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.roi import RoiBox, crop_to_box, pancreas_roi, roi_box, tight_box
from synthcp3d.scoring.base import ScoreOutput, run_scorer
from synthcp3d.scoring.ensemble import mean_ensemble, pairwise_agreement
from synthcp3d.scoring.synthesis import PAINTER_NAME, X_HAT_ABLATIONS, replaced_syntheses, synthesis_quality
from synthcp3d.scoring.volume import predicted_volume_feature
from synthcp3d.targets import per_class_quality
from synthcp3d.workflows.pancreas_model import VAE_CROP_MARGIN, PancreasStudy, TrainedModels

__all__ = [
    "METHODS",
    "ABLATIONS",
    "PIXEL_METHODS",
    "Timer",
    # one volume
    "segment_volume",
    "roi_tensors",
    "SlidingWindowNet",
    "to_native_grid",
    "native_dsc",
    "vae_input",
    "not_predicted_is_zero",
    "vae_alarm_dsc",
    "volume_feature",
    # every method on one case
    "CaseScores",
    "Comparison",
    "synthesize_and_compare",
    "pairwise_dice_quality",
    "score_case",
    "score_synthesis",
]

#: Table 2 rows, in order.
METHODS = (
    "Predicted volume (no image)", "Direct Prediction", "MC-Dropout", "VAE alarm", "SynthCP", "SynthCP + VAE alarm",
    "Pairwise Dice (fold ensemble)", "SynthCP + pairwise Dice",
)
#: SynthCP's comparator with another x̂ than G(ŷ): does it use the synthesis?
ABLATIONS = tuple("SynthCP" + suffix for suffix in X_HAT_ABLATIONS)
#: error maps scored voxel by voxel (+ SynthCP's with x̂ replaced, :data:`ABLATIONS`)
PIXEL_METHODS = ("SynthCP", "Direct Prediction", "MC-Dropout entropy", "MSP (1 - max softmax)", *ABLATIONS)
#: ``timer(stage) -> context manager`` timing a named stage (the alarm's ``StageTimer`` is one)
Timer = Callable[[str], contextlib.AbstractContextManager]


# ================================================================================================================
# segmenting and cropping one volume
# ================================================================================================================
def _sliding(study: PancreasStudy, roi_size: Sequence[int] | None = None) -> SlidingWindowInferer:
    """The study's sliding window (gaussian blending) over ``roi_size`` windows (default: its whole-volume window)."""
    return make_inferer(roi_size or study.sw_roi_size, sw_batch_size=study.sw_batch_size, overlap=study.sw_overlap)


def segment_volume(study: PancreasStudy, net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Whole-volume sliding-window segmentation: ``image (H, W, D)`` in [-1, 1] -> label map ``(H, W, D)`` uint8."""
    x = torch.as_tensor(image, dtype=torch.float32, device=study.torch_device)[None, None]
    logits = sliding_window_segment(
        x, net, study.sw_roi_size, sw_batch_size=study.sw_batch_size, overlap=study.sw_overlap, amp=study.amp
    )
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


class SlidingWindowNet(torch.nn.Module):
    """A segmenter applied to any ROI through the study's sliding window of the training patch size (AH-Net's size
    rules; the UNet's instance norm sees training-sized windows): ``(B, 1, *S)`` -> logits ``(B, C, *S)``. The
    segmenter is a submodule, so MC-Dropout reaches its dropout layers."""

    def __init__(self, study: PancreasStudy, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.inferer = _sliding(study, study.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inferer(x, self.net)


def _load_nifti(path: str | Path) -> Any:
    """A NIfTI file as a channel-first MetaTensor ``(1, X, Y, Z)`` with its affine. The reader is named: a default
    ``LoadImage`` instantiates every reader, and the DICOM one logs a warning each time (once per case here)."""
    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path))


def to_native_grid(
    pred: np.ndarray, working_affine: np.ndarray, affine: np.ndarray, shape: Sequence[int],
    device: str | torch.device | None = None,
) -> np.ndarray:
    """A label map on the working (preprocessed) grid resampled, nearest, onto the grid ``(affine, shape)``.

    The one way back to a case's own grid: true DSC, the inference stage and the alarm all call it.

    Args:
        pred: ``(H, W, D)`` labels on the working grid.
        working_affine: its ``4x4`` affine (RAS, the study spacing).
        affine, shape: the destination grid, e.g. the input NIfTI's ``4x4`` affine and ``(X, Y, Z)``.
        device: where the resampling runs (`synthcp3d.data.geometry.resample_to_grid`; default the CPU).

    Returns:
        ``(X, Y, Z)`` uint8 labels on that grid (orientation, spacing, extent).
    """
    native = resample_to_grid(pred, working_affine, affine, tuple(int(s) for s in shape), "nearest", device=device)
    return np.rint(native).astype(np.uint8)


def native_dsc(study: PancreasStudy, pred: np.ndarray, case: Mapping) -> np.ndarray:
    """True DSC ``(C,)`` of a working-grid prediction, on the case's own label grid (NaN: class absent from both).

    The prediction is resampled onto the ground truth's grid (not the reverse), so resampling never deletes a
    ground-truth voxel: a tumour smaller than a working voxel still counts, and is missed.
    """
    label = _load_nifti(case["source_label"])
    native = to_native_grid(pred, nib.load(str(case["image"])).affine, affine_of(label), label.shape[1:])
    true = per_class_quality(
        torch.as_tensor(native[None].astype(np.int64)), torch.as_tensor(np.asarray(label[0]).astype(np.int64)[None]),
        study.num_classes, "dice",
    )
    return true[0].numpy()


# ================================================================================================================
# VAE alarm
# ================================================================================================================
def vae_input(study: PancreasStudy, mask: np.ndarray, margin: int = VAE_CROP_MARGIN) -> torch.Tensor:
    """Tight crop of ``mask > 0`` (+ ``margin`` voxels) grown to a cube in millimetres (so the shape keeps its aspect
    ratio), resized (nearest) to ``vae_shape``, one-hot: ``(1, C, *vae_shape)``. Scoring takes ``margin`` from the
    VAE alarm's regressor (``vae_crop_margin``, set by `load_regressor`: the one ``train_vae_alarm`` cropped with)."""
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
    """The VAE alarm's predicted DSC ``(C,)`` of a segmentation ``pred (H, W, D)`` (the scorer ``"vae_alarm"`` on its
    aspect-keeping crop, :func:`vae_input`)."""
    mask = vae_input(study, pred, regressor.vae_crop_margin)
    out = run_scorer("vae_alarm", {"vae": vae, "vae_mask": mask, "vae_regressor": regressor})
    return not_predicted_is_zero(out.quality[0].float().cpu().numpy(), pred)


def volume_feature(study: PancreasStudy, pred: np.ndarray) -> np.ndarray:
    """The label-only baseline's feature of a working-grid segmentation ``pred (H, W, D)``: log predicted volume in
    mL per class ``(C,)``, NaN = not predicted (:func:`~synthcp3d.scoring.volume.predicted_volume_feature`)."""
    return predicted_volume_feature(pred, study.num_classes, voxel_volume=float(np.prod(study.spacing)) / 1000.0)


# ================================================================================================================
# scoring one case with every method (evaluate + inference)
# ================================================================================================================
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
        features: comparator ("SynthCP", "Direct Prediction") -> the pooled features its quality head read ``(F,)``.
    """

    quality: dict[str, np.ndarray]
    error_maps: dict[str, np.ndarray]
    box: RoiBox
    pred_roi: np.ndarray
    synthesis: np.ndarray
    image_roi: np.ndarray
    painted: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)


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
        ("class not predicted -> 0" applied); error: error probability ``(*roi)``; scores: the scorer's output.
    """

    x_roi: torch.Tensor
    pred_roi: torch.Tensor
    onehot: torch.Tensor
    box: RoiBox
    synthesis: torch.Tensor
    quality: np.ndarray
    error: torch.Tensor
    scores: ScoreOutput


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
    timer = timer or _untimed
    with timer("synthesize"):
        x_roi, p_roi, box = roi_tensors(study, image, pred)
        onehot = one_hot_labels(p_roi, study.num_classes)
        synth = generator(onehot)
    with timer("compare"):
        scores = run_scorer(
            "synthcp", {"comparator": comparator, "image": x_roi, "segmentation": onehot, "synthesis": synth}
        )
        quality = not_predicted_is_zero(scores.quality[0].float().cpu().numpy(), pred)
    return Comparison(x_roi, p_roi, onehot, box, synth, quality, scores.pixel_error[0], scores)


@torch.no_grad()
def score_case(
    study: PancreasStudy, nets: TrainedModels, image: np.ndarray, pred: np.ndarray, seed: int | None = None
) -> CaseScores:
    """Every method's predicted DSC and error map for the segmentation ``pred`` of ``image`` (both ``(H, W, D)``),
    each through the scorer registry (`synthcp3d.scoring.run_scorer`), as the 2D studies score theirs.

    "Class not predicted -> DSC 0" (:func:`not_predicted_is_zero`) applies to every method. The ablations feed
    SynthCP's comparator the class-mean painter's image and a blank image in place of ``G(ŷ)``. The pairwise-Dice
    baseline is :func:`pairwise_dice_quality` (NaN without fold segmenters). ``seed``: MC-Dropout's masks
    (`synthcp3d.workflows.common.case_seed`; ``None``: the process's random state).
    """
    judged = synthesize_and_compare(study, nets.generator, nets.synthcp, image, pred)
    x_roi, p_roi, onehot = judged.x_roi, judged.pred_roi, judged.onehot
    segmenter = SlidingWindowNet(study, nets.segmenter).eval()
    inputs = {
        "image": x_roi, "segmentation": onehot, "synthesis": judged.synthesis, "comparator": nets.synthcp,
        "direct_comparator": nets.direct, "segmenter": segmenter, "mc_regressor": nets.mc_regressor,
        "probs": torch.softmax(segmenter(x_roi).float(), dim=1),
        "vae": nets.vae, "vae_mask": vae_input(study, pred, nets.vae_regressor.vae_crop_margin),
        "vae_regressor": nets.vae_regressor,
    }
    direct = run_scorer("direct", inputs)
    mc = run_scorer("mc_dropout", inputs, samples=int(study.mc_samples), seed=seed)
    replaced = replaced_syntheses(nets.painter, p_roi, judged.synthesis, seed=int(study.seed))
    ablated = {"SynthCP" + suffix: run_scorer("synthcp", {**inputs, "synthesis": x_hat})
               for suffix, x_hat in replaced.items()}
    raw = {
        "Predicted volume (no image)": nets.volume_regressor.predict(volume_feature(study, pred)[None])[0],
        "Direct Prediction": direct.quality[0],
        "MC-Dropout": mc.quality[0],
        "VAE alarm": run_scorer("vae_alarm", inputs).quality[0],
        "SynthCP": torch.as_tensor(judged.quality),
        "Pairwise Dice (fold ensemble)": torch.as_tensor(
            pairwise_dice_quality(study, nets.fold_segmenters, image, pred)
        ),
        **{name: out.quality[0] for name, out in ablated.items()},
    }
    quality = {m: not_predicted_is_zero(q.float().cpu().numpy(), pred) for m, q in raw.items()}
    ensembles = {"SynthCP + VAE alarm": "VAE alarm", "SynthCP + pairwise Dice": "Pairwise Dice (fold ensemble)"}
    for name, other in ensembles.items():
        quality[name] = mean_ensemble(torch.as_tensor(quality["SynthCP"]), torch.as_tensor(quality[other])).numpy()
    error_maps = {
        "SynthCP": judged.error,
        "Direct Prediction": direct.pixel_error[0],
        "MC-Dropout entropy": mc.pixel_error[0].float(),
        "MSP (1 - max softmax)": run_scorer("msp", inputs).pixel_error[0],
        **{name: out.pixel_error[0] for name, out in ablated.items()},
    }
    return CaseScores(
        quality={m: quality[m] for m in (*METHODS, *ABLATIONS)},
        error_maps={m: v.cpu().numpy() for m, v in error_maps.items()},
        box=judged.box,
        pred_roi=p_roi[0].cpu().numpy(),
        synthesis=judged.synthesis[0, 0].float().cpu().numpy(),
        image_roi=x_roi[0, 0].cpu().numpy(),
        painted=replaced[X_HAT_ABLATIONS[0]][0, 0].cpu().numpy(),
        features={name: out.features[0].float().cpu().numpy()
                  for name, out in (("SynthCP", judged.scores), ("Direct Prediction", direct))},
    )


@torch.no_grad()
def score_synthesis(
    study: PancreasStudy, nets: TrainedModels, image: np.ndarray, label: np.ndarray, seed: int
) -> dict:
    """``G(y)`` and the painter's image vs the real crop, on the ground-truth ROI of ``label``; ``image`` and
    ``label`` ``(H, W, D)``: synthesizer name -> quality dict (see `synthcp3d.scoring.synthesis.synthesis_quality`)."""
    x_roi, y_roi, _ = roi_tensors(study, image, label)
    hu_per_unit = (study.hu_range[1] - study.hu_range[0]) / 2.0
    candidates = {
        "3D SPADE G(y)": nets.generator(one_hot_labels(y_roi, study.num_classes)),
        PAINTER_NAME: nets.painter(y_roi, seed=seed).to(x_roi.device),
    }
    return {
        name: synthesis_quality(img[0], x_roi[0], y_roi[0], study.class_names, scale=hu_per_unit)
        for name, img in candidates.items()
    }
