"""synthcp3d.engines.mask_perturbation: each perturbation does what it says, in 2D and 3D, and the transform is
seeded, keeps the input's type and leaves the ground truth alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from synthcp3d.engines.mask_perturbation import (
    OPERATIONS,
    RandMaskPerturbd,
    mask_perturbation_transform,
    perturb_mask,
)
from synthcp3d.errors import SynthCPInputError


def _gland(ndim: int) -> np.ndarray:
    shape = (30, 24, 16)[:ndim]
    y = np.zeros(shape, np.int64)
    y[tuple(slice(4, s - 4) for s in shape)] = 1
    y[tuple(slice(8, 13) for _ in shape)] = 2
    return y


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_operation(ndim):
    y = _gland(ndim)
    tumour = y == 2
    rng = np.random.RandomState(0)
    tumour_moves = 0
    for _ in range(10):  # one class's region moves whole (nothing clipped at these sizes)
        shifted = perturb_mask(y, rng, operation="shift")
        assert not np.array_equal(shifted, y)
        if (shifted == 2).sum() == tumour.sum() and not np.array_equal(shifted == 2, tumour):
            tumour_moves += 1
            assert np.array_equal(shifted > 0, (y > 0) | (shifted == 2))  # the old tumour's voxels became gland
    assert tumour_moves >= 1
    for _ in range(10):  # whichever class is drawn, dilation only adds and erosion only removes that class
        dilated, eroded = perturb_mask(y, rng, operation="dilate"), perturb_mask(y, rng, operation="erode")
        assert any((dilated == c).sum() > (y == c).sum() for c in (1, 2))
        assert any((eroded == c).sum() < (y == c).sum() for c in (1, 2))
    removed = perturb_mask(np.where(y == 2, 2, 0), rng, operation="remove")
    assert not removed.any()  # a lone region takes its surroundings' label: background
    inner = perturb_mask(y, np.random.RandomState(3), operation="remove")
    assert set(np.unique(inner)) in ({0, 1}, {0, 2})  # the tumour became gland, or the gland background
    if 2 not in np.unique(inner):
        assert not (inner[tumour] == 0).any()
    added = perturb_mask(y, rng, operation="add")
    assert (added != y).any() and set(np.unique(added)) <= {0, 1, 2}
    empty = perturb_mask(np.zeros_like(y), rng, operation="shift")  # nothing to shift: a false blob instead
    assert empty.any()
    with pytest.raises(SynthCPInputError, match="unknown mask perturbation"):
        perturb_mask(y, rng, operation="rotate")
    assert perturb_mask(y, rng) is not y and np.array_equal(y, _gland(ndim))  # the input is untouched


def test_transform_is_seeded_typed_and_leaves_the_label():
    y = _gland(3)
    sample = {"label": MetaTensor(torch.as_tensor(y[None])), "pred": MetaTensor(torch.as_tensor(y[None]))}

    def draws(seed):
        (t,) = mask_perturbation_transform({"prob": 1.0, "from_label": 1.0}, seed=seed)
        return [t(sample) for _ in range(len(OPERATIONS) * 2)]

    first, again, other = draws(1), draws(1), draws(2)
    for a, b in zip(first, again):
        assert torch.equal(a["pred"], b["pred"])
    assert any(not torch.equal(a["pred"], b["pred"]) for a, b in zip(first, other))
    for out in first:
        assert isinstance(out["pred"], MetaTensor) and out["pred"].dtype == sample["pred"].dtype
        assert out["label"] is sample["label"] and torch.equal(out["label"], torch.as_tensor(y[None]))
        assert not torch.equal(out["pred"], sample["pred"])
    (never,) = mask_perturbation_transform({"prob": 1e-9}, seed=0)
    assert never(sample)["pred"] is sample["pred"]
    assert mask_perturbation_transform(None, 0) == [] and mask_perturbation_transform({"prob": 0}, 0) == []
    numpy_out = RandMaskPerturbd(prob=1.0)({"label": y[None], "pred": y[None].astype(np.uint8)})
    assert isinstance(numpy_out["pred"], np.ndarray) and numpy_out["pred"].dtype == np.uint8
    with pytest.raises(SynthCPInputError, match="must lie in"):
        RandMaskPerturbd(prob=1.5)
