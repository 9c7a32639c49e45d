"""Synthetic segmentation failures for the comparator's training data (any ``spatial_dims``; not in the paper).

The paper trains the comparator on cross-validated predictions only. On a small training set those predictions'
quality is largely predictable from the mask's size (a tumour predicted large is usually really there), and a
comparator trained on them learns that shortcut: it rates a tumour mask shifted 20 mm off the real tumour as
highly as the ground truth (measured: ``benchmarks/mask_sensitivity.py``). Mixing in masks whose quality does
*not* follow their size makes comparing the image with the mask the only way to fit the targets — the
quality-control literature trains on such degraded segmentations (Robinson et al., "Automated quality control in
image segmentation: application to the UK Biobank cardiovascular magnetic resonance imaging study", JCMR 2019).

:class:`RandMaskPerturbd` replaces, with probability ``prob``, the training sample's ``pred`` by one perturbation of
the ground truth (or of ``pred``): a class's region shifted, dilated, eroded or removed, or a false blob of a class
added inside the foreground. The targets (DSC/IoU, error map) are computed from whatever ``pred`` the trainer gets,
so they stay exact. Written with scipy.ndimage because MONAI has no label-map perturbation transform.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from synthcp3d.errors import SynthCPInputError

__all__ = ["OPERATIONS", "ball", "ball_at", "perturb_mask", "RandMaskPerturbd", "mask_perturbation_transform"]

#: the perturbations, drawn uniformly
OPERATIONS = ("shift", "dilate", "erode", "remove", "add")


def ball(radius: int, ndim: int) -> np.ndarray:
    """A ball of ``radius`` voxels as a structuring element ``(2r+1,) * ndim`` (bool)."""
    grid = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(ndim))]
    return sum(g**2 for g in grid) <= radius**2


def ball_at(shape: tuple[int, ...], centre: np.ndarray, radius: int) -> np.ndarray:
    """A ball of ``radius`` voxels centred on the voxel ``centre`` in an array of ``shape``, clipped at its edges."""
    seed = np.zeros(shape, dtype=bool)
    seed[tuple(int(c) for c in centre)] = True
    return ndimage.binary_dilation(seed, ball(radius, len(shape)))


def _surrounding_label(mask: np.ndarray, region: np.ndarray) -> int:
    """The most common label just outside ``region``: what its voxels become when the region shrinks or moves (a
    tumour's -> the gland's, an organ's -> the background's)."""
    ring = ndimage.binary_dilation(region, ball(1, region.ndim)) & ~region
    values = mask[ring]
    return int(np.bincount(values).argmax()) if values.size else 0


def perturb_mask(
    mask: np.ndarray, rng: np.random.RandomState, max_shift: int = 6, max_morph: int = 2, max_blob: int = 4,
    operation: str | None = None,
) -> np.ndarray:
    """One random failure of the label map ``mask (*S)`` (ints, 0 = background); returns a new array.

    ``shift``: one foreground class's region moved by up to ``max_shift`` voxels per axis (its old voxels take the
    surrounding label); ``dilate``/``erode``: by 1..``max_morph`` voxels; ``remove``: the class relabelled as its
    surroundings; ``add``: a ball of radius 1..``max_blob`` of a random foreground class centred on a random
    foreground voxel (anywhere, if there is none). ``operation`` forces one of :data:`OPERATIONS`.
    """
    mask = np.asarray(mask)
    out = mask.copy()
    present = [int(c) for c in np.unique(mask) if c > 0]
    op = operation or OPERATIONS[rng.randint(len(OPERATIONS))]
    if op not in OPERATIONS:
        raise SynthCPInputError(f"unknown mask perturbation {op!r}; choose from {OPERATIONS}")
    if not present or op == "add":
        classes = present or [1]
        centres = np.argwhere(mask > 0) if present else np.argwhere(np.ones_like(mask, dtype=bool))
        centre = centres[rng.randint(len(centres))]
        out[ball_at(mask.shape, centre, 1 + rng.randint(max_blob))] = classes[rng.randint(len(classes))]
        return out
    cls = present[rng.randint(len(present))]
    region = mask == cls
    fill = _surrounding_label(mask, region)
    if op == "shift":
        offset = np.zeros(mask.ndim, dtype=int)
        while not offset.any():
            offset = rng.randint(-max_shift, max_shift + 1, size=mask.ndim)
        moved = ndimage.shift(region.astype(np.uint8), offset, order=0, mode="constant").astype(bool)
        out[region] = fill
        out[moved] = cls
    elif op == "dilate":
        out[ndimage.binary_dilation(region, ball(1 + rng.randint(max_morph), mask.ndim))] = cls
    elif op == "erode":
        kept = ndimage.binary_erosion(region, ball(1 + rng.randint(max_morph), mask.ndim))
        out[region & ~kept] = fill
    else:  # remove
        out[region] = fill
    return out


class RandMaskPerturbd(Randomizable, MapTransform):
    """With probability ``prob``, ``d[pred_key] <- perturb_mask(source)``; the source is the ground truth
    ``d[label_key]`` with probability ``from_label``, else ``d[pred_key]``. Arrays ``(1, *S)`` (tensor or numpy),
    returned in the input's type and dtype.

    Args:
        prob: share of samples perturbed (0 = the paper's training data).
        from_label: share of perturbations made from the ground truth rather than from the prediction.
        max_shift, max_morph, max_blob: see :func:`perturb_mask` (voxels).
    """

    def __init__(
        self, pred_key: str = "pred", label_key: str = "label", prob: float = 0.5, from_label: float = 0.5,
        max_shift: int = 6, max_morph: int = 2, max_blob: int = 4, allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, [pred_key], allow_missing_keys)
        if not 0.0 <= prob <= 1.0 or not 0.0 <= from_label <= 1.0:
            raise SynthCPInputError(f"prob and from_label must lie in [0, 1], got {prob} and {from_label}")
        self.pred_key, self.label_key = pred_key, label_key
        self.prob, self.from_label = float(prob), float(from_label)
        self.sizes = {"max_shift": int(max_shift), "max_morph": int(max_morph), "max_blob": int(max_blob)}

    def randomize(self, data: Any = None) -> None:
        """Draw whether to perturb, and from which source (the second draw only when perturbing)."""
        self._perturb = self.R.rand() < self.prob
        self._from_label = self._perturb and self.R.rand() < self.from_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._perturb:
            return d
        pred = d[self.pred_key]
        source = d[self.label_key] if self._from_label else pred
        array = np.asarray(torch.as_tensor(source).detach().cpu()).astype(np.int64)
        perturbed = perturb_mask(array[0], self.R, **self.sizes)[None]
        if isinstance(pred, torch.Tensor):
            out = pred.clone()
            out[...] = torch.as_tensor(perturbed, dtype=pred.dtype)
            d[self.pred_key] = out
        else:
            d[self.pred_key] = perturbed.astype(np.asarray(pred).dtype)
        return d


def mask_perturbation_transform(settings: Mapping[str, Any] | None, seed: int) -> Sequence[RandMaskPerturbd]:
    """The transform for a stage's ``mask_perturbation`` setting (``None`` or ``{"prob": 0}``: none), seeded."""
    if not settings or float(settings.get("prob", 0.0)) == 0.0:
        return []
    transform = RandMaskPerturbd(**dict(settings))
    transform.set_random_state(seed=int(seed))
    return [transform]

