"""CT preprocessing chains (MONAI dictionary transforms) shared by every stage of the 3D study.

Intensity convention: Hounsfield units are windowed to ``hu_range`` (default [-100, 240], soft-tissue window for the
pancreas) and scaled linearly to [-1, 1]; the synthesizer's output uses the same scale. Geometry: every volume is
reoriented to ``axcodes`` (RAS) and resampled to ``spacing`` (mm), images bilinear, labels nearest. All later
stages work in this "preprocessed space"; the inference stage inverts the chain to write its segmentation in the
input's own space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    FgBgToIndicesd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

__all__ = [
    "HU_RANGE",
    "ct_preprocessing",
    "load_preprocessed",
    "segmenter_train_augmentation",
]

HU_RANGE: tuple[float, float] = (-100.0, 240.0)


def ct_preprocessing(
    spacing: Sequence[float],
    image_key: str = "image",
    label_key: str | None = "label",
    hu_range: Sequence[float] = HU_RANGE,
    axcodes: str = "RAS",
    load: bool = True,
) -> Compose:
    """Load (optionally), reorient, resample and window a CT volume and its label map.

    Args:
        spacing: target voxel spacing in mm, e.g. ``(1.0, 1.0, 1.0)`` (full size) or coarser for the demo.
        image_key: key of the CT image (a path if ``load``, else a ``(1, H, W, D)`` array in HU).
        label_key: key of the label map, or None (inference on unlabelled volumes).
        hu_range: HU window mapped to [-1, 1].
        axcodes: target orientation.
        load: start with ``LoadImaged`` + ``EnsureChannelFirstd`` (paths in the dict).

    Returns:
        A ``Compose`` producing ``image`` float32 ``(1, H, W, D)`` in [-1, 1] and ``label`` ``(1, H, W, D)``
        (MetaTensors whose affine places every voxel in world space: `synthcp3d.data.geometry.resample_to_grid`
        maps outputs back).
    """
    keys = [image_key] + ([label_key] if label_key else [])
    modes = ["bilinear"] + (["nearest"] if label_key else [])
    steps: list = []
    if load:
        steps += [LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)]
    steps += [
        Orientationd(keys=keys, axcodes=axcodes),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=modes),
        ScaleIntensityRanged(
            keys=image_key, a_min=float(hu_range[0]), a_max=float(hu_range[1]), b_min=-1.0, b_max=1.0, clip=True
        ),
        EnsureTyped(keys=image_key, dtype=torch.float32),
    ]
    if label_key:
        steps.append(EnsureTyped(keys=label_key, dtype=torch.int64))
    return Compose(steps)


def load_preprocessed(keys: Sequence[str] = ("image", "label")) -> Compose:
    """Load volumes already written in preprocessed space: ``(1, H, W, D)`` per key."""
    return Compose([LoadImaged(keys=list(keys), image_only=True), EnsureChannelFirstd(keys=list(keys))])


def segmenter_train_augmentation(
    patch_size: Sequence[int],
    num_samples: int = 2,
    pos: float = 2.0,
    neg: float = 1.0,
    image_key: str = "image",
    label_key: str = "label",
    class_ratios: Sequence[float] | None = None,
    flip_prob: float = 0.5,
    intensity_shift: float = 0.05,
    intensity_shift_prob: float = 0.5,
) -> Compose:
    """Random training patches for the segmenter from a preprocessed ``(1, H, W, D)`` pair.

    Patches of ``patch_size`` centred on foreground (pancreas/tumour) with probability ``pos / (pos + neg)``, or,
    with ``class_ratios`` (one weight per label value, e.g. background : pancreas : tumour = 1 : 1 : 2), on a voxel
    of each class in those proportions (MONAI ``RandCropByLabelClassesd``; a class absent from a case is skipped):
    tumour-aware sampling, so a structure that is 10⁻³ of the volume is in a third of the patches. Volumes smaller
    than the patch are padded first (image with -1 = the bottom of the HU window). The voxel indices are computed by
    a deterministic step, so a ``CacheDataset`` caches them (recomputing them at every draw costs more than the
    network step on CPU). Then a left-right flip (first axis) with probability ``flip_prob`` and an intensity shift
    of up to ``±intensity_shift`` (in [-1, 1] units) with probability ``intensity_shift_prob``.
    """
    keys = [image_key, label_key]
    pad = [
        SpatialPadd(keys=image_key, spatial_size=list(patch_size), value=-1.0),
        SpatialPadd(keys=label_key, spatial_size=list(patch_size), value=0),
    ]
    if class_ratios is not None:
        indices = f"{label_key}_cls_indices"
        crop = [
            ClassesToIndicesd(keys=label_key, num_classes=len(class_ratios), indices_postfix="_cls_indices"),
            RandCropByLabelClassesd(
                keys=keys, label_key=label_key, spatial_size=list(patch_size), ratios=[float(r) for r in class_ratios],
                num_classes=len(class_ratios), num_samples=num_samples, indices_key=indices, allow_smaller=False,
                warn=False,
            ),
            DeleteItemsd(keys=[indices]),
        ]
    else:
        fg, bg = f"{label_key}_fg_indices", f"{label_key}_bg_indices"
        crop = [
            FgBgToIndicesd(keys=label_key),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key=label_key,
                spatial_size=list(patch_size),
                pos=pos,
                neg=neg,
                num_samples=num_samples,
                fg_indices_key=fg,
                bg_indices_key=bg,
                allow_smaller=False,
            ),
            DeleteItemsd(keys=[fg, bg]),
        ]
    return Compose(
        [
            *pad,
            *crop,
            RandFlipd(keys=keys, prob=float(flip_prob), spatial_axis=0),
            RandShiftIntensityd(keys=image_key, offsets=float(intensity_shift), prob=float(intensity_shift_prob)),
        ]
    )
