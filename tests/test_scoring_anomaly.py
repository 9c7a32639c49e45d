from __future__ import annotations

import pytest
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import (
    TABLE4_THRESHOLDS,
    feature_cosine_distance,
    msp_postprocess,
    run_scorer,
    synthcp_anomaly_components,
    synthcp_anomaly_score,
    threshold_sweep,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class TinySegmenter(nn.Module):
    """Stand-in: ``forward_features(x) -> (logits (B,C,*S), features (B,F,*S/2))``."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.encoder = conv(in_channels, 6, 3, stride=2, padding=1)
        self.head = conv(6, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.encoder(x))
        logits = nn.functional.interpolate(self.head(features), size=x.shape[2:])
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def test_cosine_distance_identical_opposite_and_upsampled():
    feat = torch.randn(2, 5, 4, 6)
    assert torch.allclose(feature_cosine_distance(feat, feat), torch.zeros(2, 4, 6), atol=1e-6)
    assert torch.allclose(feature_cosine_distance(feat, -feat), torch.full((2, 4, 6), 2.0), atol=1e-6)
    assert torch.allclose(feature_cosine_distance(feat, 3 * feat), torch.zeros(2, 4, 6), atol=1e-6)  # scale-free
    up = feature_cosine_distance(feat, -feat, output_size=(8, 12))
    assert up.shape == (2, 8, 12) and torch.allclose(up, torch.full_like(up, 2.0), atol=1e-6)
    vol = torch.randn(1, 3, 2, 3, 4)
    assert feature_cosine_distance(vol, vol.flip(1), output_size=(4, 6, 8)).shape == (1, 4, 6, 8)


def test_msp_postprocess_hand_example():
    t = 0.75
    probs = torch.tensor([[0.9, 0.75, 0.6, 1.0], [0.1, 0.25, 0.4, 0.0]])[None, :, :, None]  # p = .9, .75, .6, 1
    score = torch.tensor([[0.5, 0.6, 0.7, 0.8]])[..., None]
    out = msp_postprocess(score, probs, t=t)[0, :, 0]
    # p > t -> 1 - p; p == t exactly and p < t -> the cosine score.
    assert torch.allclose(out, torch.tensor([0.1, 0.6, 0.7, 0.0]), atol=1e-7)
    assert torch.equal(msp_postprocess(score, probs, t=1.0), score)  # t = 1 keeps the score everywhere
    # p == t exactly at the paper's default threshold, in float32.
    p = torch.tensor(0.999)
    edge = torch.stack([p, 1 - p])[None, :, None]
    assert msp_postprocess(torch.tensor([[0.3]]), edge, t=0.999).item() == pytest.approx(0.3)
    with pytest.raises(SynthCPInputError):
        msp_postprocess(score, probs, t=1.5)


@pytest.mark.parametrize("spatial_dims,size", [(2, (8, 12)), (3, (4, 8, 8))])
def test_anomaly_score_shapes_and_identity(spatial_dims, size):
    torch.manual_seed(0)
    segmenter = TinySegmenter(spatial_dims).train()
    x = torch.randn(2, 1, *size)
    score = synthcp_anomaly_score(segmenter, x, torch.randn_like(x))
    assert score.shape == (2, *size) and segmenter.training  # mode restored
    distance, probs = synthcp_anomaly_components(segmenter, x, x)
    assert torch.allclose(distance, torch.zeros_like(distance), atol=1e-5)  # x̂ == x: no anomaly
    assert probs.shape == (2, 3, *size)
    multi = synthcp_anomaly_score(segmenter, x, torch.randn_like(x), scales=(0.5, 1.0))
    assert multi.shape == (2, *size)


def test_threshold_sweep_matches_single_threshold_calls():
    torch.manual_seed(0)
    segmenter = TinySegmenter()
    x, x_synth = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    sweep = threshold_sweep(segmenter, x, x_synth)
    assert tuple(sweep) == TABLE4_THRESHOLDS
    for t, score in sweep.items():
        assert torch.allclose(score, synthcp_anomaly_score(segmenter, x, x_synth, t=t))
    distance, _ = synthcp_anomaly_components(segmenter, x, x_synth)
    assert torch.allclose(sweep[1.0], distance)
    registered = run_scorer("synthcp_anomaly", {"segmenter": segmenter, "image": x, "synthesis": x_synth}, t=0.9)
    assert torch.allclose(registered.anomaly, sweep[0.9])


def test_anomaly_shape_mismatch_is_a_clear_error():
    with pytest.raises(SynthCPInputError, match="synthesis"):
        synthcp_anomaly_score(TinySegmenter(), torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 6))


def test_zero_feature_vectors():
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    assert feature_cosine_distance(zero, zero).item() == 0.0
    assert feature_cosine_distance(zero, one).item() == pytest.approx(1.0)
