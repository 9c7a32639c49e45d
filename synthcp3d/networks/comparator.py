"""Comparator ``F``: a siamese network that compares an image with its synthesis to judge a segmentation.

Both ``x`` and ``x̂ = G(ŷ)`` are concatenated with the segmentation ``ŷ`` and encoded by a ResNet-18-family
encoder (MONAI ``ResNet``, any ``spatial_dims``). Two heads (paper sec. 3.2):

- ``quality``: global-average-pooled deepest features of both branches -> MLP -> sigmoid: per-class IoU/DSC
  ``(B, C)`` in [0, 1];
- ``error``: the four stages' features of both branches, fused top-down (FPN-style) and upsampled to the input
  resolution: pixel error logits ``(B, 1, *S)``.

``use_synthesis=False`` is the paper's Direct Prediction ablation (one branch on ``(x, ŷ)``). The paper shares the
encoder weights between branches, the authors' release uses two towers: ``shared_encoder``.

``difference_input=True`` (not in the paper) gives both branches the voxel-wise ``|x - x̂|`` as an extra channel.
The paper's siamese branches meet only at feature level, so a voxel-level mismatch (a missed tumour: dark in ``x``,
gland-bright in ``x̂``) must be rediscovered from two separately encoded images; with little training data the
comparator can learn to ignore ``x̂`` instead (measured: see the pancreas bundle README). The channel makes the
comparison explicit; the x̂ ablations (painter, blank) still measure whether it is used.

``difference_margin=m`` (with ``difference_input``) keeps ``|x - x̂|`` only within ``m`` voxels of the segmented
foreground (every class but 0) and zeroes it elsewhere. When the labels describe a few organs in a CT (pancreas and
tumour), ``G`` must invent the unlabelled anatomy around them (vessels, bowel, bone) from position alone, so the
full difference is dominated by that invented background rather than by the segmentation's errors, which lie in and
at the edge of the segmented region (measured: see the pancreas bundle README).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.resnet_encoder import ResNetEncoder, load_encoder_weights
from synthcp3d.networks.synthesizer import one_hot_labels

__all__ = ["SiameseComparator", "SeparateComparator", "build_comparator", "comparator_loss"]

HEADS = ("quality", "error")


class SiameseComparator(nn.Module):
    """Siamese failure-detection network (joint heads) or the Direct Prediction network.

    Args:
        spatial_dims: 2 or 3.
        image_channels: channels of ``x`` and ``x̂``.
        num_classes: classes ``C`` of the segmentation (and of the quality output).
        heads: subset of ("quality", "error").
        use_synthesis: False = Direct Prediction (one branch on ``(x, ŷ)``; ``synthesis`` is ignored).
        shared_encoder: one encoder for both branches (paper) or two towers (authors' release).
        seg_input: "onehot" (segmentation = label map ``(B, [1,] *S)`` or one-hot ``(B, C, *S)``) or "softmax"
            (probabilities ``(B, C, *S)``, squeezed by a learned 1x1 convolution to ``squeeze_channels``).
        squeeze_channels: output channels of the softmax squeeze.
        ignore_index: label value one-hot encoded as zeros when a label map is given.
        encoder_layers, encoder_channels, encoder_block, conv1_stride, norm: see `ResNetEncoder`.
        decoder_channels: width of the error decoder.
        quality_hidden: hidden width of the quality MLP.
        pretrained_path: optional local ResNet state dict for the encoder(s) (never downloaded).
        difference_input: add ``|x - x̂|`` as an input channel of both branches (see the module docstring).
        difference_margin: None = the difference everywhere; ``m >= 0`` = only within ``m`` voxels of the
            foreground of ``ŷ`` (one-hot input only; see the module docstring).
    """

    def __init__(
        self,
        spatial_dims: int,
        image_channels: int,
        num_classes: int,
        heads: Sequence[str] = HEADS,
        use_synthesis: bool = True,
        shared_encoder: bool = True,
        seg_input: Literal["onehot", "softmax"] = "onehot",
        squeeze_channels: int = 3,
        ignore_index: int | None = None,
        encoder_layers: Sequence[int] = (2, 2, 2, 2),
        encoder_channels: Sequence[int] = (64, 128, 256, 512),
        encoder_block: str = "basic",
        conv1_stride: int = 2,
        norm: str | tuple = "batch",
        decoder_channels: int = 64,
        quality_hidden: int = 256,
        pretrained_path: str | Path | None = None,
        difference_input: bool = False,
        difference_margin: int | None = None,
    ) -> None:
        super().__init__()
        heads = tuple(heads)
        if not heads or any(h not in HEADS for h in heads):
            raise ValueError(f"heads must be a non-empty subset of {HEADS}, got {heads}")
        if seg_input not in ("onehot", "softmax"):
            raise ValueError(f"seg_input must be 'onehot' or 'softmax', got {seg_input!r}")
        self.spatial_dims, self.image_channels, self.num_classes = spatial_dims, image_channels, num_classes
        self.heads, self.use_synthesis, self.shared_encoder = heads, use_synthesis, shared_encoder
        self.seg_input, self.ignore_index = seg_input, ignore_index
        self.difference_input = bool(difference_input) and use_synthesis
        if difference_margin is not None and (int(difference_margin) < 0 or seg_input != "onehot"):
            raise ValueError(f"difference_margin must be >= 0 with seg_input='onehot', got {difference_margin!r}")
        self.difference_margin = None if difference_margin is None else int(difference_margin)

        seg_channels = num_classes
        self.squeeze: nn.Module | None = None
        if seg_input == "softmax":
            self.squeeze = Convolution(spatial_dims, num_classes, squeeze_channels, kernel_size=1, conv_only=True)
            seg_channels = squeeze_channels
        self.seg_channels = seg_channels

        def encoder() -> ResNetEncoder:
            in_channels = image_channels * (2 if self.difference_input else 1) + seg_channels
            enc = ResNetEncoder(
                spatial_dims, in_channels, encoder_layers, encoder_channels, encoder_block, conv1_stride, norm=norm
            )
            if pretrained_path is not None:
                load_encoder_weights(enc, pretrained_path)
            return enc

        self.encoder = encoder()
        self.encoder_synthesis: ResNetEncoder | None = encoder() if use_synthesis and not shared_encoder else None
        branches = 2 if use_synthesis else 1
        widths = [c * branches for c in self.encoder.out_channels]

        if "quality" in heads:
            self.quality_head = nn.Sequential(
                nn.Linear(widths[-1], quality_hidden), nn.ReLU(inplace=True), nn.Linear(quality_hidden, num_classes)
            )
        if "error" in heads:
            self.laterals = nn.ModuleList(
                Convolution(spatial_dims, w, decoder_channels, kernel_size=1, conv_only=True) for w in widths
            )
            self.error_head = nn.Sequential(
                Convolution(spatial_dims, decoder_channels, decoder_channels, kernel_size=3, act="RELU",
                            norm=("group", {"num_groups": min(8, decoder_channels)})),
                Convolution(spatial_dims, decoder_channels, 1, kernel_size=1, conv_only=True),
            )

    def _seg_channels(self, segmentation: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
        if self.seg_input == "softmax":
            if segmentation.ndim != self.spatial_dims + 2 or segmentation.shape[1] != self.num_classes:
                raise SynthCPInputError(
                    f"seg_input='softmax' expects probabilities (B, {self.num_classes}, *S), "
                    f"got {tuple(segmentation.shape)}"
                )
            seg = self.squeeze(segmentation.float())  # type: ignore[misc]
        elif segmentation.ndim == self.spatial_dims + 1 or (
            segmentation.ndim == self.spatial_dims + 2 and segmentation.shape[1] == 1 and self.num_classes != 1
        ):
            seg = one_hot_labels(segmentation, self.num_classes, self.ignore_index)  # a label map
        else:
            seg = segmentation.float()  # already one-hot (B, C, *S)
        if seg.shape[2:] != spatial or seg.shape[1] != self.seg_channels:
            raise SynthCPInputError(
                f"segmentation shape {tuple(segmentation.shape)} does not match the image's spatial size "
                f"{tuple(spatial)} with {self.num_classes} classes"
            )
        return seg

    def _difference(self, image: torch.Tensor, synthesis: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``|x - x̂|`` ``(B, image_channels, *S)``, zero farther than ``difference_margin`` voxels from the
        foreground of the one-hot ``seg`` ``(B, C, *S)`` when a margin is set."""
        diff = (image - synthesis).abs()
        if self.difference_margin is None:
            return diff
        foreground = 1.0 - seg[:, :1]
        if self.difference_margin > 0:
            pool = F.max_pool2d if self.spatial_dims == 2 else F.max_pool3d
            k = 2 * self.difference_margin + 1
            foreground = pool(foreground, kernel_size=k, stride=1, padding=self.difference_margin)
        return diff * foreground

    def forward(
        self, image: torch.Tensor, segmentation: torch.Tensor, synthesis: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Judge ``segmentation`` of ``image`` against the synthesis.

        Args:
            image: ``x`` ``(B, image_channels, *S)``.
            segmentation: ``ŷ``: label map ``(B, *S)``/``(B, 1, *S)`` or one-hot ``(B, C, *S)`` ("onehot"),
                softmax ``(B, C, *S)`` ("softmax").
            synthesis: ``x̂ = G(ŷ)`` ``(B, image_channels, *S)``; required unless ``use_synthesis=False``.

        Returns:
            dict with the requested heads: ``quality`` ``(B, C)`` in [0, 1] (with ``pooled_features`` ``(B, F)``,
            the head's input), ``error_logits`` ``(B, 1, *S)``.
        """
        if image.ndim != self.spatial_dims + 2 or image.shape[1] != self.image_channels:
            raise SynthCPInputError(
                f"comparator expects an image (B, {self.image_channels}, *S) with {self.spatial_dims} spatial dims, "
                f"got {tuple(image.shape)}"
            )
        spatial = image.shape[2:]
        seg = self._seg_channels(segmentation, spatial).to(image.dtype)
        if not self.use_synthesis:
            feats = self.encoder(torch.cat([image, seg], dim=1))
        else:
            if synthesis is None:
                raise SynthCPInputError("the comparator uses the synthesis but none was given (synthesis=None)")
            if synthesis.shape != image.shape:
                raise SynthCPInputError(
                    f"synthesis shape {tuple(synthesis.shape)} differs from image shape {tuple(image.shape)}"
                )
            extra = [self._difference(image, synthesis, seg)] if self.difference_input else []
            feats = self.encoder(torch.cat([image, seg, *extra], dim=1))
            enc = self.encoder_synthesis if self.encoder_synthesis is not None else self.encoder
            feats_s = enc(torch.cat([synthesis, seg, *extra], dim=1))
            feats = [torch.cat([a, b], dim=1) for a, b in zip(feats, feats_s)]

        out: dict[str, torch.Tensor] = {}
        if "quality" in self.heads:
            pooled = feats[-1].flatten(2).mean(-1)
            out["quality"] = torch.sigmoid(self.quality_head(pooled))
            out["pooled_features"] = pooled.detach()  # what the quality head reads (a collapse diagnostic)
        if "error" in self.heads:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            fused = self.laterals[-1](feats[-1])
            for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
                fused = lateral(f) + F.interpolate(fused, size=f.shape[2:], mode=mode, align_corners=False)
            logits = self.error_head(fused)
            out["error_logits"] = F.interpolate(logits, size=spatial, mode=mode, align_corners=False)
        return out


class SeparateComparator(nn.Module):
    """The paper's "separate" variant: one `SiameseComparator` per head, same forward and output dict.

    Keyword arguments go to both networks (``heads`` is set per network).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        kwargs.pop("heads", None)
        self.quality_net = SiameseComparator(heads=("quality",), **kwargs)
        self.error_net = SiameseComparator(heads=("error",), **kwargs)
        self.heads = HEADS

    def forward(
        self, image: torch.Tensor, segmentation: torch.Tensor, synthesis: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Same contract as `SiameseComparator.forward`; returns both ``quality`` and ``error_logits``."""
        return {**self.quality_net(image, segmentation, synthesis), **self.error_net(image, segmentation, synthesis)}


def build_comparator(mode: Literal["joint", "separate", "direct"] = "joint", **kwargs) -> nn.Module:
    """Comparator for a study: "joint" (one network, both heads), "separate" (one network per head) or
    "direct" (joint without synthesis: Direct Prediction). ``kwargs`` go to `SiameseComparator`."""
    if mode == "joint":
        return SiameseComparator(**kwargs)
    if mode == "separate":
        return SeparateComparator(**kwargs)
    if mode == "direct":
        kwargs["use_synthesis"] = False
        return SiameseComparator(**kwargs)
    raise SynthCPInputError(f"comparator mode must be 'joint', 'separate' or 'direct', got {mode!r}")


def comparator_loss(
    outputs: Mapping[str, torch.Tensor],
    quality_target: torch.Tensor | None = None,
    error_target: torch.Tensor | None = None,
    ignore_index: int = 255,
    quality_weight: float = 1.0,
    error_weight: float = 1.0,
    quality_loss: Literal["l1", "bce"] = "l1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Paper eq. 8: mean L1 on the defined qualities + mean BCE on the non-ignored pixels.

    ``quality_loss="bce"`` (not in the paper) replaces the L1 term by the binary cross-entropy of the sigmoid
    output against the soft target: its gradient on the logit is ``p - y``, where L1's is ``±p(1 - p)``, which
    vanishes once the head saturates at a constant near 0 (the median of a tumour DSC that is often 0).

    Args:
        outputs: the comparator's dict (``quality`` and/or ``error_logits``).
        quality_target: ``(B, C)`` true IoU/DSC, NaN = undefined (class absent from both maps): masked out.
        error_target: ``(B, *S)`` or ``(B, 1, *S)`` with 1 = wrong pixel, 0 = right, ``ignore_index`` = excluded.
        ignore_index: ignore value of the error map (``targets.error_map`` writes the label ignore value; 255).

    Returns:
        ``(total, parts)``: the scalar loss and ``{"quality_l1": ..., "error_bce": ...}`` for the heads present.
        A head whose targets are all masked contributes an exact zero (still connected to the graph).
    """
    parts: dict[str, torch.Tensor] = {}
    if "quality" in outputs:
        if quality_target is None:
            raise ValueError("outputs hold 'quality' but no quality_target was given")
        pred = outputs["quality"]
        target = quality_target.to(pred.device, pred.dtype)
        if target.shape != pred.shape:
            raise SynthCPInputError(f"quality target shape {tuple(target.shape)} differs from {tuple(pred.shape)}")
        mask = ~torch.isnan(target)
        if quality_loss not in ("l1", "bce"):
            raise SynthCPInputError(f"quality_loss must be 'l1' or 'bce', got {quality_loss!r}")
        if not bool(mask.any()):
            parts[f"quality_{quality_loss}"] = pred.sum() * 0.0
        elif quality_loss == "l1":
            parts["quality_l1"] = (pred[mask] - target[mask]).abs().mean()
        else:
            eps = 1e-6
            parts["quality_bce"] = F.binary_cross_entropy(pred[mask].clamp(eps, 1 - eps), target[mask].clamp(0, 1))
    if "error_logits" in outputs:
        if error_target is None:
            raise ValueError("outputs hold 'error_logits' but no error_target was given")
        logits = outputs["error_logits"][:, 0]
        target = error_target[:, 0] if error_target.ndim == logits.ndim + 1 else error_target
        target = target.to(logits.device)
        if target.shape != logits.shape:
            raise SynthCPInputError(f"error target shape {tuple(error_target.shape)} does not fit logits "
                                    f"{tuple(outputs['error_logits'].shape)}")
        valid = target != ignore_index
        parts["error_bce"] = (
            F.binary_cross_entropy_with_logits(logits[valid], target[valid].to(logits.dtype))
            if bool(valid.any())
            else logits.sum() * 0.0
        )
    if not parts:
        raise ValueError("outputs hold neither 'quality' nor 'error_logits'")
    weights = {"quality_l1": quality_weight, "quality_bce": quality_weight, "error_bce": error_weight}
    total = sum(weights[k] * v for k, v in parts.items())
    return total, parts  # type: ignore[return-value]
