"""ResNet trunk (MONAI ``ResNet``, any ``spatial_dims``) returning its four stages, shared by the comparator and
the FCN-8 / DeepLab-v2 segmenters; optional dilation and local pretrained weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import ResNet

from synthcp3d.errors import SynthCPInputError

__all__ = ["ResNetEncoder", "load_encoder_weights"]

logger = logging.getLogger(__name__)


def _replace_batchnorm(module: nn.Module, norm: str | tuple, spatial_dims: int) -> None:
    """Swap every BatchNorm in ``module`` for ``norm`` in place.

    MONAI 1.6.1's ``ResNet`` passes its ``norm`` argument to the stem only (``_make_layer`` is called without it),
    so the residual stages are always batch-normalised; this makes the choice reach them too. Not
    ``monai.networks.utils.replace_modules_by_type``: it matches exact class names (no ``SyncBatchNorm``) and prints.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=child.num_features))
        else:
            _replace_batchnorm(child, norm, spatial_dims)


def _dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Turn a strided ResNet stage into a dilated one (DeepLab): strides -> 1, 3x3 convs dilated by ``dilation``.

    MONAI's ResNet has no ``replace_stride_with_dilation`` (torchvision's option), hence this in-place edit.
    """
    for m in stage.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            m.stride = (1,) * len(m.stride)
            if all(k == 3 for k in m.kernel_size):
                m.dilation = (dilation,) * len(m.dilation)
                m.padding = (dilation,) * len(m.padding)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning the outputs of its four stages (ResNet-18 with the defaults).

    With ``conv1_stride=2`` (as in ImageNet ResNets) the stages are at strides 4, 8, 16, 32 of the input;
    ``dilations=(1, 1, 2, 4)`` keeps stages 3-4 at stride 8 (DeepLab's output stride 8). Any input size works,
    but with batch norm and batch 1 the deepest map must keep more than one voxel.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        layers: residual blocks per stage ((2, 2, 2, 2) = ResNet-18, (3, 4, 23, 3) with bottleneck = ResNet-101).
        channels: base widths of the four stages (x4 at the output for bottleneck blocks).
        block: "basic" or "bottleneck".
        conv1_stride: stride of the 7x7 stem convolution.
        dilations: per-stage dilation; a stage with dilation > 1 loses its stride.
        norm: "batch" (default) or any MONAI norm, e.g. ("instance", {"affine": True}), ("group", {"num_groups": 8}).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        layers: Sequence[int] = (2, 2, 2, 2),
        channels: Sequence[int] = (64, 128, 256, 512),
        block: str = "basic",
        conv1_stride: int = 2,
        dilations: Sequence[int] = (1, 1, 1, 1),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.net = ResNet(
            block=block,
            layers=list(layers),
            block_inplanes=list(channels),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_stride=conv1_stride,
            feed_forward=False,
        )
        if not (isinstance(norm, str) and norm.lower() == "batch"):
            _replace_batchnorm(self.net, norm, spatial_dims)
        stages = (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4)
        for stage, dilation in zip(stages, dilations):
            if dilation > 1:
                _dilate_stage(stage, dilation)
        expansion = 4 if block == "bottleneck" else 1
        self.out_channels = tuple(c * expansion for c in channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, *S)`` -> four feature maps ``(B, out_channels[i], *S / stride_i)``."""
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        feats = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            feats.append(x)
        return feats


def load_encoder_weights(encoder: ResNetEncoder, path: str | Path) -> int:
    """Load a ResNet state dict (e.g. ImageNet ResNet-18 saved from torchvision) from a local file, never a URL.

    Keys may carry a ``module.``/``net.`` prefix or sit under ``"state_dict"``; tensors whose shape differs are
    skipped, except the stem convolution with other input channels: its first channels are copied. MONAI's
    ResNet uses torchvision's parameter names, so a torchvision checkpoint maps one to one. Not
    ``monai.networks.utils.copy_model_state``: it neither strips prefixes nor copies a stem of other input channels.

    Returns:
        the number of tensors loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"pretrained encoder weights file {path} does not exist")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise SynthCPInputError(f"pretrained encoder weights file {path} does not hold a state dict")
    own = encoder.net.state_dict()
    loaded = {}
    for key, value in state.items():
        for prefix in ("module.", "net."):
            key = key[len(prefix) :] if key.startswith(prefix) else key
        if key not in own:
            continue
        target = own[key]
        if target.shape == value.shape:
            loaded[key] = value
        elif key == "conv1.weight" and target.shape[0] == value.shape[0] and target.shape[2:] == value.shape[2:]:
            merged = target.clone()
            k = min(target.shape[1], value.shape[1])
            merged[:, :k] = value[:, :k]
            loaded[key] = merged
    if not loaded:
        raise SynthCPInputError(f"no tensor in {path} matches the ResNet encoder (wrong architecture or dims?)")
    encoder.net.load_state_dict(loaded, strict=False)
    logger.info("loaded %d/%d encoder tensors from %s", len(loaded), len(own), path)
    return len(loaded)
