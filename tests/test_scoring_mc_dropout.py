from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import synthcp3d.networks as networks
from synthcp3d.scoring import MCDropoutQualityRegressor, mc_dropout_probs, mean_entropy_per_class, run_scorer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _stand_in_enable_mc_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    return model


@pytest.fixture(autouse=True)
def mc_dropout_api(monkeypatch):
    """Use the networks package's enable_mc_dropout when it exists, a stand-in otherwise."""
    if not hasattr(networks, "enable_mc_dropout"):
        monkeypatch.setattr(networks, "enable_mc_dropout", _stand_in_enable_mc_dropout, raising=False)


class DropoutSegmenter(nn.Module):
    def __init__(self, spatial_dims: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.body = nn.Sequential(conv(1, 8, 3, padding=1), norm(8), nn.ReLU(), nn.Dropout(0.5))
        self.head = conv(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("spatial_dims,size", [(2, (6, 8)), (3, (4, 4, 6))])
def test_mc_dropout_shapes_stochasticity_and_modes(spatial_dims, size):
    torch.manual_seed(0)
    segmenter = DropoutSegmenter(spatial_dims).eval()
    x = torch.randn(2, 1, *size)
    mean_probs, entropy = mc_dropout_probs(segmenter, x, samples=8)
    assert mean_probs.shape == (2, 3, *size) and entropy.shape == (2, *size)
    assert torch.allclose(mean_probs.sum(1), torch.ones(2, *size), atol=1e-5)
    assert ((entropy >= 0) & (entropy <= 1 + 1e-6)).all()
    assert all(not m.training for m in segmenter.modules())  # every flag restored, dropout included
    with torch.no_grad():
        deterministic = segmenter(x).softmax(1)
    assert not torch.allclose(mean_probs, deterministic, atol=1e-4)  # dropout was active
    again, _ = mc_dropout_probs(segmenter, x, samples=8)
    assert not torch.equal(again, mean_probs)


def test_mean_entropy_per_class():
    entropy = torch.tensor([[[0.1, 0.3], [0.5, 0.7]]])
    prediction = torch.tensor([[[0, 0], [1, 1]]])
    features = mean_entropy_per_class(entropy, prediction, num_classes=3)
    assert torch.allclose(features[0, :2], torch.tensor([0.2, 0.6])) and torch.isnan(features[0, 2])
    onehot = nn.functional.one_hot(prediction, 3).permute(0, 3, 1, 2)
    assert torch.allclose(mean_entropy_per_class(entropy, onehot, 3), features, equal_nan=True)


def test_quality_regressor_recovers_relation_and_handles_nan():
    rng = np.random.default_rng(1)
    features = rng.uniform(0, 0.8, size=(30, 2))
    quality = 1.0 - features  # IoU falls as the entropy rises
    features[0, 1] = np.nan  # class 1 not predicted in image 0 ...
    quality[0, 1] = 0.0  # ... but present in its label: IoU 0
    quality[5, 0] = np.nan  # class 0 absent from label and prediction: undefined
    regressor = MCDropoutQualityRegressor(num_classes=2).fit(features, quality)
    assert np.allclose(regressor.coef, [-1.0, -1.0]) and np.allclose(regressor.intercept, [1.0, 1.0])
    prediction = regressor.predict(features)
    assert prediction[0, 1] == 0.0  # not predicted -> quality 0
    assert torch.allclose(prediction[1:, 1], torch.as_tensor(1.0 - features[1:, 1]).float(), atol=1e-6)
    restored = MCDropoutQualityRegressor.from_state_dict(json.loads(json.dumps(regressor.state_dict())))
    assert torch.equal(restored.predict(features), prediction)
    assert restored.state_dict()["kind"] == "mc_dropout_quality"


def test_registered_scorer_with_regressor():
    torch.manual_seed(0)
    segmenter = DropoutSegmenter()
    regressor = MCDropoutQualityRegressor(3).fit(np.zeros((2, 3)) + [[0.1], [0.5]], [[0.9] * 3, [0.5] * 3])
    out = run_scorer("mc_dropout", {"segmenter": segmenter, "image": torch.randn(1, 1, 6, 8)}, samples=4)
    assert out.quality is None and out.pixel_error.shape == (1, 6, 8)
    out = run_scorer(
        "mc_dropout", {"segmenter": segmenter, "image": torch.randn(1, 1, 6, 8), "mc_regressor": regressor}, samples=4
    )
    assert out.quality.shape == (1, 3) and ((out.quality >= 0) & (out.quality <= 1)).all()


def test_seeded_masks_repeat_and_leave_the_global_random_state_alone():
    torch.manual_seed(0)
    segmenter = DropoutSegmenter().eval()
    x = torch.randn(1, 1, 6, 8)
    state = torch.get_rng_state()
    first, _ = mc_dropout_probs(segmenter, x, samples=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # restored: what runs next draws as if nothing had
    torch.rand(100)  # another history before the next call
    again, _ = mc_dropout_probs(segmenter, x, samples=4, seed=7)
    other, _ = mc_dropout_probs(segmenter, x, samples=4, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_scorer_quality_reads_the_judged_segmentation_regions():
    """With a ``segmentation`` input the feature is the mean entropy inside the judged mask's class regions (those
    its regressor was fitted on), not inside the regions of the MC mean's argmax."""
    torch.manual_seed(0)
    segmenter = DropoutSegmenter()
    x = torch.randn(1, 1, 6, 8)
    judged = torch.zeros(1, 6, 8, dtype=torch.long)
    judged[:, :, 4:] = 2  # two regions, class 1 not predicted
    onehot = nn.functional.one_hot(judged, 3).permute(0, 3, 1, 2).float()
    regressor = MCDropoutQualityRegressor(3)
    regressor.coef, regressor.intercept, regressor.fitted = np.array([-1.0, -1.0, -1.0]), np.ones(3), True
    inputs = {"segmenter": segmenter, "image": x, "mc_regressor": regressor, "segmentation": onehot}
    out = run_scorer("mc_dropout", inputs, samples=4, seed=3)
    _, entropy = mc_dropout_probs(segmenter, x, samples=4, seed=3)
    expected = 1.0 - mean_entropy_per_class(entropy, judged, 3)
    assert torch.allclose(out.quality[0, [0, 2]], expected[0, [0, 2]].float()) and out.quality[0, 1] == 0.0


def test_full_linear_map_matches_numpy_least_squares_column_by_column():
    """Each output column = least squares on the whole (NaN -> 0) entropy vector, over its defined rows; checked
    against numpy's lstsq; a class not predicted predicts 0; the state round-trips."""
    from synthcp3d.scoring.mc_dropout import MCDropoutFullLinearRegressor

    rng = np.random.default_rng(0)
    n, c = 40, 3
    x = rng.uniform(0, 1, (n, c))
    y = np.clip(0.9 - 0.5 * x[:, [1, 2, 0]] + 0.05 * rng.standard_normal((n, c)), 0, 1)  # column k from feature k+1
    x[3, 1], x[7, 2] = np.nan, np.nan  # classes not predicted
    y[5, 0] = np.nan  # undefined true quality
    regressor = MCDropoutFullLinearRegressor(c).fit(x, y)
    filled = np.nan_to_num(x)
    for k in range(c):
        rows = np.isfinite(y[:, k])
        design = np.c_[filled[rows], np.ones(rows.sum())]
        solution = np.linalg.lstsq(design, y[rows, k], rcond=None)[0]
        assert np.allclose(regressor.coef[k], solution[:-1], atol=1e-8)
        assert np.isclose(regressor.intercept[k], solution[-1], atol=1e-8)
    predicted = regressor.predict(x).numpy()
    assert predicted[3, 1] == 0.0 and predicted[7, 2] == 0.0 and ((predicted >= 0) & (predicted <= 1)).all()
    expected = np.clip(filled @ regressor.coef.T + regressor.intercept, 0, 1)
    keep = ~np.isnan(x)
    assert np.allclose(predicted[keep], expected[keep], atol=1e-6)
    restored = MCDropoutFullLinearRegressor.from_state_dict(json.loads(json.dumps(regressor.state_dict())))
    assert torch.equal(restored.predict(x), regressor.predict(x))
