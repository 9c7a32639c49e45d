"""The label-only baseline's feature and regressor (synthcp3d.scoring.volume)."""

import math

import numpy as np
import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.volume import predicted_volume_feature, predicted_volume_regressor


def _counted_by_hand(pred, num_classes, voxel_volume):
    """Independent path: count each label with a Python loop over the flat voxels."""
    counts = [0] * num_classes
    for v in np.asarray(pred).ravel().tolist():
        if 0 <= v < num_classes:
            counts[v] += 1
    return [math.log(n * voxel_volume) if n else math.nan for n in counts]


@pytest.mark.parametrize("shape", [(7, 5), (4, 6, 3)])
def test_feature_matches_a_hand_count_with_absent_and_ignored_labels(shape):
    rng = np.random.default_rng(0)
    pred = rng.choice([0, 1, 3, 255], size=shape, p=[0.6, 0.3, 0.05, 0.05])  # class 2 absent, 255 = ignore
    got = predicted_volume_feature(torch.as_tensor(pred), 4, voxel_volume=0.01875)
    np.testing.assert_allclose(got, _counted_by_hand(pred, 4, 0.01875), equal_nan=True)
    assert np.isnan(got[2]) and np.isfinite(got[[0, 1, 3]]).all()


def test_feature_of_a_single_voxel_and_bad_voxel_volume():
    pred = np.zeros((3, 3, 3), dtype=np.int64)
    pred[1, 1, 1] = 2
    assert predicted_volume_feature(pred, 3, voxel_volume=2.0)[2] == pytest.approx(math.log(2.0))
    with pytest.raises(SynthCPInputError):
        predicted_volume_feature(pred, 3, voxel_volume=0.0)


def test_regressor_learns_size_and_predicts_zero_when_not_predicted():
    rng = np.random.default_rng(1)
    log_volume = rng.uniform(-2, 3, size=40)
    dsc = np.clip(0.4 + 0.1 * log_volume, 0, 1)
    feats = np.stack([np.full(40, 5.0), log_volume], axis=1)
    true = np.stack([np.full(40, 0.99), dsc], axis=1)
    regressor = predicted_volume_regressor(2).fit(feats, true)
    assert regressor.coef[1] == pytest.approx(0.1) and regressor.intercept[1] == pytest.approx(0.4)
    out = regressor.predict(np.array([[5.0, 1.0], [5.0, np.nan]])).numpy()
    assert out[0, 1] == pytest.approx(0.5) and out[1, 1] == 0.0
