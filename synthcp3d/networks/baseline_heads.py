"""Networks of two baselines: ConfidNet's TCP head (Corbière et al., NeurIPS 2019) and the image auto-encoder of
the AE anomaly baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.nets import AutoEncoder

__all__ = ["ConfidNetHead", "build_image_autoencoder"]


class ConfidNetHead(nn.Module):
    """Regress the true-class probability (TCP) per pixel from a frozen segmenter's features.

    ``len(hidden)`` 3x3 convolution + ReLU layers, then a 1x1 convolution and a sigmoid (ConfidNet's
    segmentation variant uses a stack of convolutions of this kind on the last feature map).

    Args:
        spatial_dims: 2 or 3.
        feature_channels: ``F`` of the segmenter's ``forward_features`` map.
        hidden: widths of the hidden convolutions.
    """

    def __init__(self, spatial_dims: int, feature_channels: int, hidden: Sequence[int] = (128, 128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = feature_channels
        for h in hidden:
            layers.append(Convolution(spatial_dims, ch, h, kernel_size=3, act="RELU", norm=None))
            ch = h
        layers.append(Convolution(spatial_dims, ch, 1, kernel_size=1, conv_only=True))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, *S')`` -> TCP confidence ``(B, 1, *S')`` in [0, 1] (upsample to the image to compare)."""
        return torch.sigmoid(self.net(features))


def build_image_autoencoder(
    spatial_dims: int,
    image_channels: int,
    channels: Sequence[int] = (32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 1,
    **kwargs,
) -> AutoEncoder:
    """MONAI ``AutoEncoder`` ``(B, I, *S) -> (B, I, *S)`` with a linear output (images live in [-1, 1]); the AE
    baseline scores a pixel by its reconstruction error. Inputs must be divisible by ``prod(strides)``."""
    return AutoEncoder(
        spatial_dims=spatial_dims,
        in_channels=image_channels,
        out_channels=image_channels,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        **kwargs,
    )
