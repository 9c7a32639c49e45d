from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import LinearQualityRegressor


def planted(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.uniform(0.0, 1.0, size=(n, 2))
    quality = np.stack([0.9 - 0.8 * features[:, 0], 0.2 + 0.5 * features[:, 1]], axis=1)
    return features, quality


def test_recovers_planted_relation_and_ignores_nan_targets():
    features, quality = planted()
    corrupted = quality.copy()
    corrupted[::3, 0] = np.nan  # undefined targets must be skipped, not treated as numbers
    regressor = LinearQualityRegressor(2).fit(features, corrupted)
    assert np.allclose(regressor.coef, [-0.8, 0.5]) and np.allclose(regressor.intercept, [0.9, 0.2])
    assert regressor.num_samples == [26, 40]
    prediction = regressor.predict(torch.as_tensor(features))
    assert prediction.dtype == torch.float32 and torch.allclose(prediction, torch.as_tensor(quality).float(), atol=1e-5)


def test_predictions_clipped_and_missing_features():
    regressor = LinearQualityRegressor(1, missing_feature_quality=0.0).fit([0.0, 1.0], [0.0, 1.0])
    assert regressor.predict([-1.0, 0.5, 2.0, np.nan]).flatten().tolist() == [0.0, 0.5, 1.0, 0.0]
    plain = LinearQualityRegressor(1).fit([0.0, 1.0], [0.0, 1.0])
    assert torch.isnan(plain.predict([np.nan])).all()


def test_degenerate_columns():
    with pytest.warns(UserWarning, match="no usable"):
        regressor = LinearQualityRegressor(2).fit([[0.1, 0.2], [0.3, 0.2]], [[np.nan, 0.4], [np.nan, 0.6]])
    prediction = regressor.predict([[0.5, 0.9]])
    assert torch.isnan(prediction[0, 0]) and prediction[0, 1] == pytest.approx(0.5)  # constant feature: mean


def test_state_dict_is_json_and_round_trips():
    features, quality = planted()
    regressor = LinearQualityRegressor(2).fit(features, quality)
    state = json.loads(json.dumps(regressor.state_dict()))
    restored = LinearQualityRegressor.from_state_dict(state)
    assert torch.equal(restored.predict(features), regressor.predict(features))
    with pytest.raises(SynthCPInputError):
        LinearQualityRegressor.from_state_dict({**state, "kind": "other"})


def test_unfitted_and_bad_shapes():
    with pytest.raises(RuntimeError):
        LinearQualityRegressor(2).predict([[0.0, 0.0]])
    with pytest.raises(SynthCPInputError):
        LinearQualityRegressor(2).fit(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(SynthCPInputError):
        LinearQualityRegressor(2).fit(np.zeros((3, 3)), np.zeros((3, 3)))


def test_bfloat16_features_from_autocast_are_accepted():
    """``Tensor.numpy()`` refuses bfloat16 (what autocast produces); features used to crash there."""
    features, quality = planted()
    regressor = LinearQualityRegressor(2).fit(torch.as_tensor(features).bfloat16(), quality)
    assert np.allclose(regressor.coef, [-0.8, 0.5], atol=0.02)
    prediction = regressor.predict(torch.as_tensor(features).bfloat16())
    assert prediction.dtype == torch.float32 and torch.allclose(prediction, torch.as_tensor(quality).float(), atol=0.01)
