"""Segmentation models ``M`` judged by SynthCP, behind one factory, with MC-Dropout and last-layer features.

Every segmenter is a `Segmenter`: ``body(x) -> features``, then ``dropout -> classifier -> logits``, the logits
upsampled to the input size where the body works at a lower resolution. ``forward_features`` returns both (the
anomaly comparison uses the features of ``x`` and of ``x̂``).

==============  =======================================================  ==============================
name            architecture                                             features ``(B, F, *S')``
==============  =======================================================  ==============================
``ahnet``       MONAI ``AHNet`` (3D; 2D works too), ``layers``,          ``S' = S / 2``
                ``psp_block_num``; its ``Final`` block is the classifier
``fcn8``        ResNet trunk, FCN-8-style top-down fusion of the         ``S' = S / 8``
                stride-8/16/32 stages (features fused, then scored)      (``S / 4``: ``stem_stride=1``)
``deeplabv2``   dilated ResNet (output stride 8) + ASPP-v2 classifier    ``S' = S / 8``
                (sum of 4 dilated 3x3 convolutions, rates 6/12/18/24)    (``S / 4``: ``stem_stride=1``)
``unet``        MONAI ``BasicUNet`` (small; any ``spatial_dims``)        ``S' = S``
==============  =======================================================  ==============================

AH-Net input sizes (MONAI 1.6.1, ``upsample_mode="transpose"``): every spatial size but the last divisible by
``2 ** (psp_block_num + 3)`` and >= 32, the last divisible by 32; with batch 1 in training the deepest map must
keep > 1 voxel (32^3 fails in batch norm, 32x32x64 works). 96^3 works with ``psp_block_num`` 0-2, 128^3 with 4.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import AHNet, BasicUNet

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.resnet_encoder import ResNetEncoder, load_encoder_weights

__all__ = [
    "SEGMENTER_NAMES",
    "Segmenter",
    "build_segmenter",
    "enable_mc_dropout",
    "mc_dropout",
]

SEGMENTER_NAMES = ("ahnet", "fcn8", "deeplabv2", "unet")


class Segmenter(nn.Module):
    """``body -> dropout -> classifier`` with logits at the input resolution.

    Args:
        body: module ``(B, in, *S) -> features (B, F, *S')``.
        classifier: module ``features -> logits (B, C, *S'')``; resized to ``S`` by (bi/tri)linear interpolation.
        spatial_dims: 2 or 3.
        dropout: probability of the dropout before the classifier (MC-Dropout's source of randomness).
        input_multiple: per spatial dimension, the number every input size must be a multiple of.
    """

    def __init__(
        self,
        body: nn.Module,
        classifier: nn.Module,
        spatial_dims: int,
        dropout: float = 0.0,
        input_multiple: Sequence[int] | int = 1,
    ) -> None:
        super().__init__()
        self.body, self.classifier, self.spatial_dims = body, classifier, spatial_dims
        self.dropout = nn.Dropout(p=dropout)
        if isinstance(input_multiple, int):
            input_multiple = (input_multiple,) * spatial_dims
        self.input_multiple = tuple(input_multiple)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise SynthCPInputError(
                f"segmenter expects (B, C, *S) with {self.spatial_dims} spatial dims, got shape {tuple(x.shape)}"
            )
        if any(s % m for s, m in zip(x.shape[2:], self.input_multiple)):
            raise SynthCPInputError(
                f"segmenter input size {tuple(x.shape[2:])} is not a multiple of {self.input_multiple}; "
                "pad or crop the input"
            )

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, in, *S)`` -> ``(logits (B, C, *S), features (B, F, *S'))``; see the module table for ``S'``."""
        self._check(x)
        features = self.body(x)
        logits = self.classifier(self.dropout(features))
        if logits.shape[2:] != x.shape[2:]:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            logits = F.interpolate(logits, size=x.shape[2:], mode=mode, align_corners=False)
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in, *S)`` -> logits ``(B, C, *S)``."""
        return self.forward_features(x)[0]


class _FCN8Body(nn.Module):
    """ResNet trunk whose stride-8/16/32 stages are projected to ``width`` channels and summed top-down (FCN-8's
    skip fusion applied to features rather than to class scores, so one last-layer feature map exists)."""

    def __init__(self, encoder: ResNetEncoder, spatial_dims: int, width: int) -> None:
        super().__init__()
        self.encoder, self.spatial_dims = encoder, spatial_dims
        self.laterals = nn.ModuleList(
            Convolution(spatial_dims, c, width, kernel_size=1, conv_only=True) for c in encoder.out_channels[1:]
        )
        self.smooth = Convolution(spatial_dims, width, width, kernel_size=3, act="RELU", norm="BATCH")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)[1:]  # strides 8, 16, 32
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        fused = self.laterals[-1](feats[-1])
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            fused = lateral(f) + F.interpolate(fused, size=f.shape[2:], mode=mode, align_corners=False)
        return self.smooth(fused)


class _LastStage(nn.Module):
    """The deepest stage of a `ResNetEncoder` (DeepLab's features)."""

    def __init__(self, encoder: ResNetEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1]


class ASPPv2(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling classifier: the sum of parallel dilated 3x3 convolutions to
    ``num_classes`` (MONAI's ``SimpleASPP`` concatenates branches and adds a 1x1 fusion: the v3 form)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            Convolution(spatial_dims, in_channels, num_classes, kernel_size=3, dilation=r, conv_only=True)
            for r in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([b(x) for b in self.branches]).sum(0)


def build_segmenter(
    name: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    dropout: float = 0.0,
    options: dict | None = None,
    **kwargs,
) -> Segmenter:
    """Build a segmenter by name (see the module table).

    ``options`` holds the name's own keyword arguments (below) as one mapping — a bundle config can then choose the
    architecture with one setting — and is merged with ``kwargs``.

    Keyword arguments per name:
        ahnet: ``layers=(3, 4, 6, 3)``, ``psp_block_num=2``, ``upsample_mode="transpose"``.
        fcn8: ``layers=(2, 2, 2, 2)``, ``channels=(64, 128, 256, 512)``, ``block="basic"``, ``width=256``,
            ``norm="batch"``, ``pretrained_path=None`` (local ResNet state dict), ``stem_stride=2``.
        deeplabv2: ``layers=(3, 4, 23, 3)``, ``channels=(64, 128, 256, 512)``, ``block="bottleneck"`` (ResNet-101),
            ``rates=(6, 12, 18, 24)``, ``norm="batch"``, ``pretrained_path=None``, ``stem_stride=2``.
        unet: ``features=(16, 16, 32, 64, 128, 16)``, ``norm``, ``act`` (MONAI ``BasicUNet``).

    ``stem_stride=1`` drops the stride of the ResNet's 7x7 stem: every stage, and the output, at half the stride
    (FCN-8 fuses strides 4/8/16, DeepLab-v2 decides at stride 4) for about four times the trunk's compute; for
    small inputs, where stride 8 cannot draw thin objects (at 128x64 the output grid is 16x8).

    Returns:
        a `Segmenter`: ``forward(x) -> logits (B, C, *S)``, ``forward_features(x) -> (logits, features)``.
    """
    name = name.lower()
    kwargs = {**dict(options or {}), **kwargs}
    if name == "ahnet":
        psp = kwargs.pop("psp_block_num", 2)
        net = AHNet(
            layers=tuple(kwargs.pop("layers", (3, 4, 6, 3))),
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=num_classes,
            psp_block_num=psp,
            upsample_mode=kwargs.pop("upsample_mode", "transpose"),
        )
        _no_extra(name, kwargs)
        classifier = net.final  # norm -> relu -> conv -> x2 up: the classifier sits on half-resolution features
        net.final = nn.Identity()
        multiple = [2 ** (psp + 3)] * spatial_dims
        multiple[-1] = 32  # AH-Net pools the last axis less: it needs a multiple of 32 whatever psp_block_num is
        return Segmenter(net, classifier, spatial_dims, dropout, multiple)
    if name in ("fcn8", "deeplabv2"):
        is_fcn = name == "fcn8"
        pretrained_path: str | Path | None = kwargs.pop("pretrained_path", None)
        stem_stride = int(kwargs.pop("stem_stride", 2))
        if stem_stride not in (1, 2):
            raise SynthCPInputError(f"{name}: stem_stride must be 1 or 2, got {stem_stride}")
        encoder = ResNetEncoder(
            spatial_dims,
            in_channels,
            layers=kwargs.pop("layers", (2, 2, 2, 2) if is_fcn else (3, 4, 23, 3)),
            channels=kwargs.pop("channels", (64, 128, 256, 512)),
            block=kwargs.pop("block", "basic" if is_fcn else "bottleneck"),
            conv1_stride=stem_stride,
            dilations=(1, 1, 1, 1) if is_fcn else (1, 1, 2, 4),
            norm=kwargs.pop("norm", "batch"),
        )
        if pretrained_path is not None:
            load_encoder_weights(encoder, pretrained_path)
        if is_fcn:
            width = kwargs.pop("width", 256)
            _no_extra(name, kwargs)
            body: nn.Module = _FCN8Body(encoder, spatial_dims, width)
            classifier: nn.Module = Convolution(spatial_dims, width, num_classes, kernel_size=1, conv_only=True)
            return Segmenter(body, classifier, spatial_dims, dropout, 16 * stem_stride)
        rates = kwargs.pop("rates", (6, 12, 18, 24))
        _no_extra(name, kwargs)
        classifier = ASPPv2(spatial_dims, encoder.out_channels[-1], num_classes, rates)
        return Segmenter(_LastStage(encoder), classifier, spatial_dims, dropout, 4 * stem_stride)
    if name == "unet":
        features = tuple(kwargs.pop("features", (16, 16, 32, 64, 128, 16)))
        net = BasicUNet(spatial_dims, in_channels, num_classes, features=features, **kwargs)
        net.final_conv = nn.Identity()
        classifier = Convolution(spatial_dims, features[-1], num_classes, kernel_size=1, conv_only=True)
        return Segmenter(net, classifier, spatial_dims, dropout, 16)
    raise SynthCPInputError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTER_NAMES)}")


def _no_extra(name: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"segmenter {name!r} got unexpected arguments: {', '.join(sorted(kwargs))}")


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout layers (MC-Dropout inference); returns ``model``."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    return model


@contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: `enable_mc_dropout` inside, every module's previous train/eval mode restored on exit."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield enable_mc_dropout(model)
    finally:
        for m, mode in modes.items():
            m.training = mode
