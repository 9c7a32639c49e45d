"""Segmenter factory (unet / fcn8 / deeplabv2 / ahnet), last-layer features and MC-Dropout."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import assert_backward

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import Segmenter, build_segmenter, enable_mc_dropout, mc_dropout

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SHAPES = {2: (32, 64), 3: (32, 32, 32)}
TINY = {
    "unet": dict(features=(4, 4, 8, 8, 16, 4)),
    "fcn8": dict(layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), width=8),
    "deeplabv2": dict(layers=(1, 1, 1, 1), channels=(4, 4, 8, 8), rates=(1, 2)),
}
# feature-map channels and downsampling factor of each tiny variant
FEATURES = {"unet": (4, 1), "fcn8": (8, 8), "deeplabv2": (32, 8)}  # deeplab: bottleneck x4


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["unet", "fcn8", "deeplabv2"])
def test_segmenter_forward_features_backward(name, spatial_dims):
    """logits (B, C, *S); features (B, F, *S / factor)."""
    torch.manual_seed(0)
    net = build_segmenter(name, spatial_dims, in_channels=1, num_classes=3, dropout=0.1, **TINY[name])
    assert isinstance(net, Segmenter)
    shape = SHAPES[spatial_dims]
    x = torch.randn(2, 1, *shape)
    logits, features = net.forward_features(x)
    channels, factor = FEATURES[name]
    assert logits.shape == (2, 3, *shape)
    assert features.shape == (2, channels, *(s // factor for s in shape))
    assert torch.equal(net.eval()(x), net.forward_features(x)[0])
    net.train()
    (logits.square().mean() + features.mean()).backward()
    assert_backward(net)


@pytest.mark.parametrize("name", ["fcn8", "deeplabv2"])
def test_stem_stride_one_halves_the_output_stride_and_the_input_multiple(name):
    """stem_stride=1: features at S / 4 instead of S / 8; inputs need half the multiple; 3 is refused."""
    x = torch.randn(1, 1, *SHAPES[2])
    strided = build_segmenter(name, 2, 1, 3, **TINY[name])
    unstrided = build_segmenter(name, 2, 1, 3, stem_stride=1, **TINY[name])
    assert strided.forward_features(x)[1].shape[2:] == (4, 8)
    assert unstrided.forward_features(x)[1].shape[2:] == (8, 16)
    assert unstrided.forward(x).shape == (1, 3, *SHAPES[2])
    assert unstrided.input_multiple == tuple(m // 2 for m in strided.input_multiple)
    assert unstrided.body.encoder.net.conv1.stride == (1, 1)
    with pytest.raises(SynthCPInputError, match="stem_stride"):
        build_segmenter(name, 2, 1, 3, stem_stride=3, **TINY[name])


def test_ahnet_cpu_variant_and_size_check():
    """AH-Net (layers=(1,1,1,1), psp_block_num=0), batch 2 at 32^3 (batch 1 needs e.g. 32x32x64: batch norm on the
    1-voxel deepest map): logits (B, C, *S), features (B, 124, *S / 2)."""
    torch.manual_seed(0)
    net = build_segmenter("ahnet", 3, in_channels=1, num_classes=3, dropout=0.1, layers=(1, 1, 1, 1), psp_block_num=0)
    assert net.input_multiple == (8, 8, 32)
    x = torch.randn(2, 1, 32, 32, 32)
    start = time.perf_counter()
    logits, features = net.forward_features(x)
    logits.square().mean().backward()
    elapsed = time.perf_counter() - start
    assert logits.shape == (2, 3, 32, 32, 32)
    assert features.shape == (2, 124, 16, 16, 16)
    assert_backward(net)
    assert elapsed < 60
    with pytest.raises(SynthCPInputError, match="multiple"):
        net(torch.randn(1, 1, 32, 32, 48))
    with pytest.raises(SynthCPInputError):
        net(torch.randn(1, 32, 32, 64))
    psp2 = build_segmenter("ahnet", 3, 1, 2, layers=(1, 1, 1, 1), psp_block_num=2)
    assert psp2.input_multiple == (32, 32, 32)


def test_unknown_name_and_arguments():
    with pytest.raises(SynthCPInputError, match="unknown segmenter"):
        build_segmenter("segformer", 2, 1, 3)
    with pytest.raises(TypeError, match="unexpected"):
        build_segmenter("fcn8", 2, 1, 3, psp_block_num=2)


def test_mc_dropout_random_in_mc_mode_deterministic_in_eval():
    torch.manual_seed(0)
    net = build_segmenter("fcn8", 2, 1, 3, dropout=0.5, **TINY["fcn8"])
    x = torch.randn(1, 1, 32, 64)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    with mc_dropout(net):
        assert net.dropout.training and not net.training
        batchnorms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert batchnorms and not any(m.training for m in batchnorms)  # BN keeps its running statistics
        a, b = net(x), net(x)
        assert not torch.allclose(a, b)
    assert all(m.training for m in net.modules())  # previous modes restored
    enable_mc_dropout(net)
    assert net.dropout.training and not net.body.training
    assert not torch.allclose(net(x), net(x))
