from __future__ import annotations

import numpy as np
import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.roi import (
    PancreasROICropd,
    crop_to_box,
    foreground_center,
    largest_component,
    pancreas_roi,
    paste_from_box,
    roi_box,
    tight_box,
)


def test_center_of_bbox_and_fallback():
    mask = np.zeros((20, 30, 10), dtype=np.int64)
    mask[2:5, 10:21, 4] = 1
    mask[6, 12, 4] = 2
    center, fallback = foreground_center(mask)
    assert center == (4.0, 15.0, 4.0) and not fallback
    center, fallback = foreground_center(np.zeros((20, 30, 10)))
    assert center == (9.5, 14.5, 4.5) and fallback


def test_box_is_shifted_inside_and_has_roi_size():
    box = roi_box((1.0, 28.0, 5.0), (8, 8, 4), (20, 30, 10))
    assert box.start == (0, 22, 4) and box.stop == (8, 30, 8)
    assert all(b - a == r for a, b, r in zip(box.start, box.stop, (8, 8, 4)))
    assert box.pad_before == (0, 0, 0)


def test_crop_pads_small_volume_and_paste_inverts():
    vol = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(1, 4, 6, 3)
    mask = torch.zeros(4, 6, 3)
    mask[1, 2, 1] = 1
    box = pancreas_roi(mask, (6, 4, 5))
    crop = crop_to_box(vol, box, pad_value=-1.0)
    assert crop.shape == (1, 6, 4, 5)
    assert (crop == -1).sum() == 6 * 4 * 5 - 4 * 4 * 3  # padded voxels only along axes 0 and 2
    back = paste_from_box(crop, box, (4, 6, 3), fill=0.0)
    inside = back[(slice(None),) + box.slices]
    assert torch.equal(inside, vol[(slice(None),) + box.slices])
    npcrop = crop_to_box(vol.numpy(), box, pad_value=-1.0)
    assert np.array_equal(npcrop, crop.numpy())


def test_tight_box_margin_and_empty():
    mask = np.zeros((10, 10, 10))
    mask[3:5, 4, 6:8] = 1
    box = tight_box(mask, margin=1)
    assert box.start == (2, 3, 5) and box.stop == (6, 6, 9)
    assert tight_box(np.zeros((4, 4, 4))).fallback


def test_dict_transform_records_box_and_crops_keys():
    image = torch.randn(1, 16, 16, 8)
    label = torch.zeros(1, 16, 16, 8, dtype=torch.long)
    label[0, 10:14, 10:14, 2:4] = 1
    out = PancreasROICropd(["image", "label"], source_key="label", roi_size=(8, 8, 8))({"image": image, "label": label})
    assert out["image"].shape == (1, 8, 8, 8) and out["label"].shape == (1, 8, 8, 8)
    assert out["label"].sum() == label.sum()  # the whole pancreas is inside the ROI
    assert out["roi_box"]["fallback"] is False and out["roi_box"]["start"] == [8, 8, 0]


def test_bad_roi_raises():
    with pytest.raises(SynthCPInputError):
        roi_box((1.0, 2.0), (4, 4, 4), (8, 8, 8))
    with pytest.raises(SynthCPInputError):
        roi_box((1.0, 2.0, 3.0), (4, 0, 4), (8, 8, 8))


def test_roi_centres_on_the_largest_component_not_on_a_false_positive_blob():
    """A distant 2-voxel blob would move the bounding-box centre by half the distance; the largest component wins."""
    mask = np.zeros((40, 20, 10), dtype=np.int64)
    mask[4:12, 8:12, 3:7] = 1  # the "pancreas" (128 voxels), centre (7.5, 9.5, 4.5)
    mask[6:8, 9:11, 4:6] = 2  # a tumour inside it: same component
    mask[37:39, 2, 2] = 1  # a false-positive blob far away
    assert foreground_center(mask)[0][0] == 21.0  # the old rule: a box between the two
    box = pancreas_roi(mask, (8, 8, 4))
    assert box.start == (4, 6, 3) and box.stop == (12, 14, 7)
    cropped = PancreasROICropd(keys="label", source_key="label", roi_size=(8, 8, 4))({"label": mask[None]})
    assert cropped["roi_box"]["start"] == [4, 6, 3]  # the dict transform follows the same rule
    comp = largest_component(mask)
    assert comp.sum() == 128 and not comp[37:39].any()
    diagonal = np.zeros((3, 3, 3), dtype=bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # touching at a corner: one component (26-connectivity)
    assert largest_component(diagonal).sum() == 2
    assert not largest_component(np.zeros((4, 4, 4))).any()


def test_largest_component_matches_labelling_the_whole_volume() -> None:
    """Labelling only the foreground's bounding box gives what labelling the whole volume gives (scipy, directly),
    ties between equal components included (the first met in C order wins)."""
    from scipy import ndimage

    def whole_volume(m: np.ndarray) -> np.ndarray:
        components, count = ndimage.label(m, structure=np.ones((3,) * m.ndim, dtype=bool))
        if count <= 1:
            return m
        return components == int(np.argmax(np.bincount(components.ravel())[1:])) + 1

    rng = np.random.default_rng(0)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(4, 14, size=int(rng.integers(2, 4))))
        mask = rng.random(shape) < rng.uniform(0.02, 0.3)
        if trial % 2 == 0:  # foreground away from the borders: a bounding box smaller than the volume (or none)
            inner = np.zeros_like(mask)
            inner[(slice(2, -2),) * mask.ndim] = True
            mask &= inner
        np.testing.assert_array_equal(largest_component(mask), whole_volume(mask))
    ties = np.zeros((9, 9, 9), dtype=bool)
    ties[6:8, 6:8, 6:8] = ties[2:4, 2:4, 2:4] = True  # two equal cubes: the one nearer the origin is met first
    kept = largest_component(ties)
    assert kept[2:4, 2:4, 2:4].all() and not kept[6:8, 6:8, 6:8].any()
