"""benchmarks/mask_sensitivity.py: the judged masks have the quality their names promise, and the measures read
a mask-blind predictor as blind."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from mask_sensitivity import PREDICTORS, SHIFTED, judged_masks, measures  # noqa: E402


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture
def label():
    """A 20-voxel-long gland (pancreas 1) with a 5-voxel-wide tumour (2) near one end."""
    y = np.zeros((40, 30, 12), np.uint8)
    y[5:35, 10:20, 3:9] = 1
    y[8:13, 12:17, 4:8] = 2
    return y


def test_masks_from_the_ground_truth(label):
    pred = np.zeros_like(label)
    masks = judged_masks(label, (2.5, 2.5, 3.0), pred)
    tumour = label == 2
    assert masks["segmenter"] is not None and not masks["segmenter"].any()
    np.testing.assert_array_equal(masks["ground truth"], label)
    for name, mask in masks.items():
        if name == "segmenter":
            continue
        assert set(np.unique(mask)) <= {0, 1, 2}
        np.testing.assert_array_equal(mask > 0, (label > 0) | (mask == 2), err_msg=name)  # the gland keeps its voxels
    assert (masks["tumour dilated 1"] == 2)[tumour].all() and (masks["tumour dilated 1"] == 2).sum() > tumour.sum()
    assert (masks["tumour dilated 2"] == 2).sum() > (masks["tumour dilated 1"] == 2).sum()
    assert (masks["tumour eroded 1"] == 2).sum() < tumour.sum() and not (masks["tumour eroded 1"] == 2)[~tumour].any()
    shifted = masks["tumour shifted 10 mm"] == 2
    assert shifted.sum() == tumour.sum()  # moved 4 voxels, into the gland, nothing clipped
    assert 0 < _dice(shifted, tumour) < 1
    assert _dice(masks["tumour shifted 20 mm"] == 2, tumour) < _dice(shifted, tumour)
    elsewhere = masks["tumour elsewhere in the gland"] == 2
    assert elsewhere.any() and not (elsewhere & tumour).any() and (label[elsewhere] > 0).all()
    assert np.argwhere(elsewhere).mean(0)[0] > 25  # the far end of the gland


def test_a_tumour_free_gland_gets_a_false_tumour_only(label):
    free = np.where(label == 2, 1, label).astype(np.uint8)
    masks = judged_masks(free, (2.5, 2.5, 3.0), free)
    assert set(masks) == {"segmenter", "ground truth", "tumour elsewhere in the gland"}
    assert (masks["tumour elsewhere in the gland"] == 2).sum() > 0


def test_measures_read_a_blind_predictor_as_blind():
    rng = np.random.default_rng(0)
    rows = []
    for case in range(6):
        difficulty = rng.uniform(0.2, 0.8)
        for mask, true in enumerate(np.linspace(0.0, 1.0, 4) * difficulty + 0.1):
            name = {0: SHIFTED, 3: "ground truth"}.get(mask, f"m{mask}")
            row = {"case": f"c{case}", "mask": name, "true": float(true)}
            row.update({name: 0.5 for name in PREDICTORS})
            row["SynthCP"] = float(true)  # follows the mask exactly
            row["Direct Prediction"] = difficulty  # the image only: the same for every mask of an image
            rows.append(row)
    rows.append({"case": "c0", "mask": "undefined", "true": float("nan"), **{name: 0.0 for name in PREDICTORS}})
    table = measures(rows)
    assert table["SynthCP"]["within-image Spearman"] == pytest.approx(100.0)
    assert table["SynthCP"]["pair order"] == pytest.approx(100.0)
    assert table["Direct Prediction"]["within-image Spearman"] == 0.0
    assert table["Direct Prediction"]["pair order"] == pytest.approx(50.0)
    assert table["SynthCP"]["GT > shifted"] == 100.0 and table["Direct Prediction"]["GT > shifted"] == 50.0
    assert table["Direct Prediction"]["pooled Spearman"] > 0  # across images it still ranks by difficulty
