"""ConfidNet TCP head and the AE-baseline image auto-encoder."""

from __future__ import annotations

import pytest
import torch

from synthcp3d.networks import ConfidNetHead, build_image_autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.mark.parametrize("spatial_dims, shape", [(2, (8, 16)), (3, (8, 8, 8))])
def test_confidnet_head(spatial_dims, shape):
    """(B, F, *S') -> (B, 1, *S') in [0, 1]."""
    head = ConfidNetHead(spatial_dims, feature_channels=6, hidden=(8, 8))
    out = head(torch.randn(2, 6, *shape))
    assert out.shape == (2, 1, *shape) and ((out >= 0) & (out <= 1)).all()
    torch.nn.functional.mse_loss(out, torch.rand_like(out)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize("spatial_dims, shape", [(2, (32, 64)), (3, (16, 16, 16))])
def test_image_autoencoder(spatial_dims, shape):
    """(B, I, *S) -> (B, I, *S), linear output."""
    torch.manual_seed(0)
    ae = build_image_autoencoder(spatial_dims, image_channels=3 if spatial_dims == 2 else 1, channels=(4, 8),
                                 strides=(2, 2))
    x = torch.rand(2, ae.in_channels, *shape) * 2 - 1
    out = ae(x)
    assert out.shape == x.shape
    assert not isinstance(list(ae.modules())[-1], (torch.nn.Sigmoid, torch.nn.Tanh))
    torch.nn.functional.mse_loss(out, x).backward()
    params = list(ae.parameters())
    assert all(p.grad is not None for p in params)
    assert sum(bool(p.grad.abs().sum() > 0) for p in params) / len(params) >= 0.8
