"""A segmentation to judge that did not come from the bundle: load it, map its labels, check and match its grid.

The DSC alarm can judge any model's (or any person's) mask of a CT: nnU-Net, TotalSegmentator, a MONAI bundle.
The mask arrives with its own label values (``--labels pancreas=1,tumour=2``) and possibly on another voxel grid
of the same physical space (a resampled export); it is then mapped onto the image's grid (nearest). A mask whose
field of view or orientation differs from the image's is a different scan (or a wrong file): refused, since
resampling it would judge a segmentation of something else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from synthcp3d.errors import SynthCPInputError

__all__ = ["parse_label_map", "load_mask", "check_same_space", "mask_to_classes"]

#: The pancreas bundle's classes and their indices (``--labels`` default: the MSD Task07 values).
DEFAULT_LABELS = {"pancreas": 1, "tumour": 2}

MaskInput = str | os.PathLike | tuple[np.ndarray, np.ndarray]


def parse_label_map(
    text: str | Mapping[str, int] | None, class_names: Sequence[str] = ("pancreas", "tumour")
) -> dict[str, int]:
    """``"pancreas=1,tumour=2"`` (or a mapping, or None for :data:`DEFAULT_LABELS`) -> ``{class name: mask value}``.

    Raises:
        SynthCPInputError: unknown class name, a value that is not a positive integer, two classes on one value.
    """
    if text is None:
        return dict(DEFAULT_LABELS)
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise SynthCPInputError(f"--labels expects NAME=VALUE pairs like pancreas=1,tumour=2, got {part!r}")
            items.append((name.strip().lower(), value.strip()))
    aliases = {"tumor": "tumour"}
    out: dict[str, int] = {}
    for name, value in items:
        name = aliases.get(name.lower(), name.lower())
        if name not in class_names:
            raise SynthCPInputError(f"--labels: unknown class {name!r}; the bundle judges {', '.join(class_names)}")
        text_value = str(value).strip()
        if not text_value.isdigit() or int(text_value) < 1:
            raise SynthCPInputError(f"--labels: the value of {name} must be a positive integer, got {value!r}")
        out[name] = int(text_value)
    if not out:
        raise SynthCPInputError("--labels names no class: give e.g. pancreas=1,tumour=2")
    if len(set(out.values())) != len(out):
        raise SynthCPInputError(f"--labels maps two classes to one mask value: {out}")
    return out


def load_mask(source: MaskInput) -> tuple[np.ndarray, np.ndarray, str]:
    """A label mask -> ``(values (X, Y, Z) int64, affine 4x4, source text)``: a NIfTI file or ``(array, affine)``.

    Raises:
        SynthCPInputError: missing or unreadable file, not 3D, non-integer values.
    """
    if isinstance(source, tuple) and len(source) == 2:
        array, affine, text = np.asarray(source[0]), np.asarray(source[1], dtype=np.float64), "<array>"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise SynthCPInputError(f"mask {path} does not exist (give a NIfTI label file)")
        try:
            img = nib.load(str(path))
            array, affine = np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - nibabel raises several types for a bad file; one line for the user
            raise SynthCPInputError(f"mask {path} is not a readable NIfTI file ({type(err).__name__})") from None
        text = str(path)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise SynthCPInputError(f"mask {text} has shape {tuple(array.shape)}: a 3D label volume is needed")
    if affine.shape != (4, 4):
        raise SynthCPInputError(f"mask {text}: the affine must be 4x4, got {affine.shape}")
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.rint(values)):
            raise SynthCPInputError(f"mask {text} holds non-integer values: a label map is needed, not probabilities")
    return values.astype(np.int64), affine, text


def _corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates ``(8, 3)`` of the outer voxel edges of a grid (voxel centres at integer indices)."""
    lo, hi = np.full(3, -0.5), np.asarray(shape, dtype=np.float64) - 0.5
    idx = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return idx @ affine[:3, :3].T + affine[:3, 3]


def check_same_space(
    mask_affine: np.ndarray, mask_shape: Sequence[int], image_affine: np.ndarray, image_shape: Sequence[int],
    what: str = "mask",
) -> None:
    """Refuse a mask whose axes or field of view differ from the image's (any voxel size is accepted).

    Axes agree when each pair of voxel-axis directions differs by less than 0.01 (cosine units, about 0.6°); the
    fields of view agree when every outer corner lies within one voxel (of the coarser grid) of the image's.

    Raises:
        SynthCPInputError: one line naming the first mismatch.
    """
    mask_dirs = mask_affine[:3, :3] / np.linalg.norm(mask_affine[:3, :3], axis=0)
    image_dirs = image_affine[:3, :3] / np.linalg.norm(image_affine[:3, :3], axis=0)
    if np.abs(mask_dirs - image_dirs).max() > 1e-2:
        raise SynthCPInputError(
            f"the {what} is not in the image's orientation (axis directions {np.round(mask_dirs, 3).tolist()} vs "
            f"{np.round(image_dirs, 3).tolist()}): export it on the image's grid"
        )
    voxel = max(np.linalg.norm(mask_affine[:3, :3], axis=0).max(), np.linalg.norm(image_affine[:3, :3], axis=0).max())
    shift = np.abs(_corners(mask_affine, mask_shape) - _corners(image_affine, image_shape)).max()
    if shift > voxel:
        raise SynthCPInputError(
            f"the {what} does not cover the image's field of view (corners up to {shift:.1f} mm apart, more than a "
            f"voxel, {voxel:.2f} mm): it belongs to another scan or another crop"
        )


def mask_to_classes(
    values: np.ndarray, labels: Mapping[str, int], class_index: Mapping[str, int]
) -> tuple[np.ndarray, list[int]]:
    """Mask values -> the bundle's class indices ``(X, Y, Z)`` uint8; every other value becomes background.

    Returns:
        (classes, the nonzero mask values that no class claimed, sorted) — reported as a warning.
    """
    classes = np.zeros(values.shape, dtype=np.uint8)
    for name, value in labels.items():
        classes[values == value] = class_index[name]
    present = np.unique(values)
    unclaimed = sorted(int(v) for v in present if v != 0 and int(v) not in set(labels.values()))
    return classes, unclaimed
