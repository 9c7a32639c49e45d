"""Synthesizer ``G``: a SPADE semantic-to-image generator and its multi-scale patch discriminator.

Intensity convention: the data transforms normalise every image to ``[-1, 1]`` (CT: a clipped HU window mapped
linearly; RGB: ``x / 127.5 - 1``), so the generator ends in ``tanh`` by default and its output lives in the
same range as the real images the comparator sees.

Why not ``monai.networks.nets.SPADENet``: its decoder computes its starting resolution once from a fixed
``input_shape`` (``SPADEDecoder.latent_spatial_shape``), so one network cannot serve both whole crops and
sliding-window patches of another size. ``SPADEGenerator`` composes the same MONAI pieces
(``SPADENetResBlock`` = residual block with ``monai.networks.blocks.SPADE`` norms) but derives the starting
resolution from each input: any spatial size divisible by ``2 ** num_upsamples`` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Act
from monai.networks.nets import MultiScalePatchDiscriminator
from monai.networks.nets.spade_network import SPADENetResBlock

from synthcp3d.errors import SynthCPInputError

__all__ = ["one_hot_labels", "SPADEGenerator", "build_discriminator", "discriminator_input"]


def one_hot_labels(labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """One-hot encode a label map; ignore-label voxels become all-zero vectors.

    Args:
        labels: integer class indices ``(B, *S)`` or ``(B, 1, *S)`` (a float tensor of whole numbers is accepted).
        num_classes: number of classes ``C``; valid indices are ``0..C-1``.
        ignore_index: label value (e.g. 255) encoded as all zeros instead of raising.

    Returns:
        float tensor ``(B, C, *S)``.

    Raises:
        SynthCPInputError: a label outside ``0..C-1`` that is not ``ignore_index``.
    """
    if labels.ndim >= 3 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.is_floating_point():
        labels = labels.round()
    labels = labels.long()
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        raise SynthCPInputError(
            f"label map holds value {int(labels[bad][0])} outside the declared classes 0..{num_classes - 1}"
        )
    # scatter straight into float (B, C, *S): F.one_hot would build an int64 (B, *S, C) copy first
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), device=labels.device)
    return onehot.scatter_(1, torch.where(valid, labels, 0).unsqueeze(1), valid.unsqueeze(1).float())


class SPADEGenerator(nn.Module):
    """SPADE generator (Park et al., CVPR 2019) without the style encoder, for any ``spatial_dims``.

    The one-hot map is downsampled ``2 ** num_upsamples`` times and embedded by a convolution; then
    ``num_upsamples`` SPADE residual blocks each followed by a x2 upsampling, one last SPADE block at full
    resolution, and a 3x3 convolution to ``out_channels``.

    Args:
        spatial_dims: 2 or 3.
        num_classes: channels ``C`` of the one-hot input.
        out_channels: image channels (1 for CT, 3 for RGB).
        channels: widths of the ``num_upsamples + 1`` SPADE blocks, coarse to fine; its length fixes
            ``num_upsamples = len(channels) - 1`` unless ``num_upsamples`` is given (then it must agree).
        num_upsamples: number of x2 upsamplings; the input's spatial size must be divisible by ``2**num_upsamples``.
        spade_hidden_channels: width of the SPADE modulation MLP.
        norm: parameter-free base norm inside SPADE ("INSTANCE" as in the paper; "BATCH" is sync-BN in the paper).
        output_activation: "tanh" (images in [-1, 1]) or None (linear output).
        upsampling_mode: "nearest" as in SPADE.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        out_channels: int = 1,
        channels: Sequence[int] = (256, 128, 64, 32, 16),
        num_upsamples: int | None = None,
        spade_hidden_channels: int = 64,
        norm: str | tuple = "INSTANCE",
        output_activation: str | None = "tanh",
        upsampling_mode: str = "nearest",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if num_upsamples is None:
            num_upsamples = len(channels) - 1
        if len(channels) != num_upsamples + 1:
            raise ValueError(f"channels needs num_upsamples + 1 = {num_upsamples + 1} entries, got {len(channels)}")
        if output_activation not in ("tanh", None):
            raise ValueError(f"output_activation must be 'tanh' or None, got {output_activation!r}")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.out_channels = out_channels
        self.num_upsamples = num_upsamples
        self.conv_init = Convolution(
            spatial_dims, num_classes, channels[0], kernel_size=kernel_size, act=None, norm=None
        )
        act = (Act.LEAKYRELU, {"negative_slope": 0.2})
        self.blocks = nn.ModuleList(
            SPADENetResBlock(
                spatial_dims=spatial_dims,
                in_channels=channels[i],
                out_channels=channels[min(i + 1, len(channels) - 1)],
                label_nc=num_classes,
                spade_intermediate_channels=spade_hidden_channels,
                norm=norm,
                act=act,
                kernel_size=kernel_size,
            )
            for i in range(len(channels))
        )
        self.upsampling = nn.Upsample(scale_factor=2, mode=upsampling_mode)
        # SPADE's last layer is leaky ReLU -> conv (pre-activation), which MONAI's Convolution (conv -> act) lacks.
        self.final = nn.Sequential(
            nn.LeakyReLU(0.2),
            Convolution(spatial_dims, channels[-1], out_channels, kernel_size=kernel_size, conv_only=True),
        )
        self.output_activation = nn.Tanh() if output_activation == "tanh" else nn.Identity()

    def forward(self, seg_onehot: torch.Tensor) -> torch.Tensor:
        """Synthesize an image from a one-hot (or soft) semantic map.

        Args:
            seg_onehot: ``(B, C, *S)`` float, every spatial size divisible by ``2 ** num_upsamples``.

        Returns:
            image ``(B, out_channels, *S)``, in [-1, 1] with the default tanh output.
        """
        if seg_onehot.ndim != self.spatial_dims + 2 or seg_onehot.shape[1] != self.num_classes:
            raise SynthCPInputError(
                f"generator expects a ({self.num_classes}-channel) one-hot map of shape (B, C, *S) with "
                f"{self.spatial_dims} spatial dims, got {tuple(seg_onehot.shape)}"
            )
        factor = 2**self.num_upsamples
        spatial = seg_onehot.shape[2:]
        if any(s % factor for s in spatial):
            raise SynthCPInputError(
                f"generator input size {tuple(spatial)} is not divisible by 2**{self.num_upsamples}"
            )
        seg_onehot = seg_onehot.float()
        x = F.interpolate(seg_onehot, size=tuple(s // factor for s in spatial), mode="nearest")
        x = self.conv_init(x)
        for i, block in enumerate(self.blocks):
            x = block(x, seg_onehot)
            if i < self.num_upsamples:
                x = self.upsampling(x)
        return self.output_activation(self.final(x))


def build_discriminator(
    spatial_dims: int,
    num_classes: int,
    image_channels: int,
    num_d: int = 2,
    num_layers_d: int = 3,
    channels: int = 64,
    norm: str | tuple = "INSTANCE",
    minimum_size_im: int | None = None,
    **kwargs,
) -> MultiScalePatchDiscriminator:
    """MONAI ``MultiScalePatchDiscriminator`` on ``concat(image, onehot)`` (build its input with `discriminator_input`).

    MONAI's multi-scale discriminator feeds the same input to every sub-discriminator (pix2pixHD downsamples the
    input instead); discriminator ``i`` has ``num_layers_d * (i + 1)`` layers and downsamples by
    ``2 ** (num_layers_d * (i + 1))``. Its last normalised layer must keep more than one voxel, so every spatial
    size must be at least ``2 ** (num_layers_d * num_d + 2)`` (the default 2 x 3 needs 256; for 32-voxel crops use
    e.g. ``num_d=2, num_layers_d=1`` or ``num_d=1, num_layers_d=3``). Instance norm is the default because batch
    norm fails on 1-voxel maps with batch 1 in 3D.

    Returns:
        module whose forward takes ``(B, image_channels + C, *S)`` and returns ``(outputs, features)``:
        a list of ``num_d`` patch logits and a list of ``num_d`` lists of intermediate feature maps.
    """
    if minimum_size_im is None:
        minimum_size_im = 2 ** (num_layers_d * num_d + 2)
    return MultiScalePatchDiscriminator(
        num_d=num_d,
        num_layers_d=num_layers_d,
        spatial_dims=spatial_dims,
        channels=channels,
        in_channels=image_channels + num_classes,
        out_channels=1,
        norm=norm,
        minimum_size_im=minimum_size_im,
        **kwargs,
    )


def discriminator_input(image: torch.Tensor, seg_onehot: torch.Tensor) -> torch.Tensor:
    """Concatenate ``image (B, I, *S)`` and ``seg_onehot (B, C, *S)`` along channels -> ``(B, I + C, *S)``."""
    if image.shape[0] != seg_onehot.shape[0] or image.shape[2:] != seg_onehot.shape[2:]:
        raise SynthCPInputError(
            f"image shape {tuple(image.shape)} and one-hot shape {tuple(seg_onehot.shape)} do not match"
        )
    return torch.cat([image, seg_onehot.to(image.dtype)], dim=1)
