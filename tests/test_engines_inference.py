"""Sliding-window inference: right shapes on volumes larger than the window, equal to direct inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from synthcp3d.engines.inference import sliding_window_segment
from synthcp3d.errors import SynthCPInputError

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
