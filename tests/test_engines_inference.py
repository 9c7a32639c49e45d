"""Sliding-window inference: right shapes on volumes larger than the window, equal to direct inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from synthcp3d.engines.inference import sliding_window_error_map, sliding_window_segment, sliding_window_synthesize
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import SPADEGenerator, build_comparator, one_hot_labels

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_segment_pointwise_net_equals_direct_with_small_windows() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Conv3d(4, 3, 1))  # no receptive field: windows are exact
    image = torch.randn(1, 1, 20, 18, 12)
    out = sliding_window_segment(image, net, roi_size=(8, 8, 8), overlap=0.5)
    assert out.shape == (1, 3, 20, 18, 12)
    assert torch.allclose(out, net(image), atol=1e-5)


def test_segment_conv_net_equals_direct_when_window_covers_volume() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1))
    image = torch.randn(2, 1, 10, 12, 8)
    assert torch.allclose(sliding_window_segment(image, net, roi_size=(10, 12, 8)), net(image), atol=1e-5)
    tiled = sliding_window_segment(image, net, roi_size=(6, 6, 6))
    assert tiled.shape == (2, 2, 10, 12, 8)
    with pytest.raises(SynthCPInputError, match="spatial dims"):
        sliding_window_segment(image[0], net, roi_size=(6, 6, 6))


def test_synthesize_windows_one_hot_per_patch() -> None:
    torch.manual_seed(0)
    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(8, 4), spade_hidden_channels=4)
    label = torch.randint(0, 3, (1, 1, 24, 20))
    direct = gen.eval()(one_hot_labels(label, 3))
    assert torch.allclose(sliding_window_synthesize(label, gen, (24, 20), num_classes=3), direct, atol=1e-5)
    tiled = sliding_window_synthesize(label, gen, (8, 8), num_classes=3)
    assert tiled.shape == (1, 1, 24, 20) and tiled.abs().max() <= 1.0


def test_error_map_matches_direct_comparator() -> None:
    torch.manual_seed(0)
    comparator = build_comparator(
        "joint", spatial_dims=2, image_channels=1, num_classes=3, encoder_layers=(1, 1, 1, 1),
        encoder_channels=(4, 8, 8, 8), decoder_channels=4, quality_hidden=8,
    ).eval()
    image, synth = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    pred = torch.randint(0, 3, (1, 1, 32, 32))
    direct = torch.sigmoid(comparator(image, pred, synth)["error_logits"])
    windowed = sliding_window_error_map(image, pred, comparator, (32, 32), synthesis=synth)
    assert torch.allclose(windowed, direct, atol=1e-5)
    big = sliding_window_error_map(
        torch.randn(1, 1, 48, 40), torch.randint(0, 3, (1, 1, 48, 40)), comparator, (32, 32),
        synthesis=torch.randn(1, 1, 48, 40),
    )
    assert big.shape == (1, 1, 48, 40) and 0 <= big.min() and big.max() <= 1
    with pytest.raises(SynthCPInputError, match="share"):
        sliding_window_error_map(image, pred[..., :16], comparator, (32, 32), synthesis=synth)
