"""Mask VAE of the VAE alarm (Liu, Xia, Yang, Yuille, Xu, "Alarm system for segmentation", ICCV 2019).

No official code exists; this is a reimplementation on MONAI's ``VarAutoEncoder``. The VAE is trained on
ground-truth one-hot masks (a tight foreground crop resized to the fixed ``in_shape``); frozen, it scores a
predicted mask by its loss value, which a regressor maps to a predicted DSC.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import VarAutoEncoder

from synthcp3d.errors import SynthCPInputError
from synthcp3d.targets import per_class_quality

__all__ = ["MaskVAE", "vae_loss", "kl_divergence"]


class MaskVAE(nn.Module):
    """VAE on one-hot masks ``(B, C, *in_shape)``; the decoder returns per-class logits.

    In eval mode the latent code is the posterior mean (``use_mean_at_inference``), so scoring is deterministic.

    Args:
        spatial_dims: 2 or 3.
        num_classes: channels ``C`` of the one-hot masks (background included).
        in_shape: fixed spatial shape, e.g. (32, 32, 32) or (64, 64); each size divisible by ``prod(strides)``.
        latent_size: length of the latent vector.
        channels, strides: encoder widths and strides (the decoder mirrors them).
        num_res_units: residual units per level (MONAI ``VarAutoEncoder``).
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        in_shape: Sequence[int],
        latent_size: int = 64,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 0,
        norm: str | tuple = "INSTANCE",
    ) -> None:
        super().__init__()
        if len(in_shape) != spatial_dims:
            raise ValueError(f"in_shape {tuple(in_shape)} must have {spatial_dims} entries")
        self.spatial_dims, self.num_classes, self.in_shape = spatial_dims, num_classes, tuple(in_shape)
        self.net = VarAutoEncoder(
            spatial_dims=spatial_dims,
            in_shape=(num_classes, *in_shape),
            out_channels=num_classes,
            latent_size=latent_size,
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
            norm=norm,
            use_sigmoid=False,
            use_mean_at_inference=True,
        )

    def _check(self, mask_onehot: torch.Tensor) -> None:
        if tuple(mask_onehot.shape[1:]) != (self.num_classes, *self.in_shape):
            raise SynthCPInputError(
                f"mask VAE expects one-hot masks (B, {self.num_classes}, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(mask_onehot.shape)}; resize the foreground crop to the VAE's in_shape"
            )

    def forward(self, mask_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, *in_shape)`` -> ``(recon_logits (B, C, *in_shape), mu (B, L), logvar (B, L))``."""
        self._check(mask_onehot)
        recon, mu, logvar, _ = self.net(mask_onehot.float())
        return recon, mu, logvar

    def _eval_forward(self, mask_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` in eval mode (posterior mean), the previous train/eval mode restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            return self(mask_onehot)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def reconstruction_dice(self, mask_onehot: torch.Tensor) -> torch.Tensor:
        """Per-class Dice between a mask and its reconstruction (eval mode, posterior mean, argmax of the logits).

        Args:
            mask_onehot: ``(B, C, *in_shape)``.

        Returns:
            ``(B, C)`` in [0, 1]; NaN where the class is absent from both the mask and its reconstruction.
        """
        recon, _, _ = self._eval_forward(mask_onehot)
        return per_class_quality(recon.argmax(1), mask_onehot.argmax(1), self.num_classes, metric="dice")

    @torch.no_grad()
    def score(self, mask_onehot: torch.Tensor, beta: float = 1e-3) -> torch.Tensor:
        """Per-sample VAE loss (eval mode) ``(B,)``: the alarm's feature (higher = less plausible shape)."""
        recon, mu, logvar = self._eval_forward(mask_onehot)
        return vae_loss(recon, mask_onehot, mu, logvar, beta=beta, reduction="none")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent dimensions: ``(B, L)`` -> ``(B,)``."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


_dice = DiceLoss(sigmoid=True, reduction="none")


def vae_loss(
    recon_logits: torch.Tensor,
    target_onehot: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1e-3,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft Dice + BCE reconstruction (sigmoid per class) + ``beta`` * KL.

    Args:
        recon_logits: ``(B, C, *S)`` decoder logits.
        target_onehot: ``(B, C, *S)`` one-hot mask.
        mu, logvar: ``(B, L)`` posterior parameters.
        beta: KL weight (the KL is summed over the latent, the reconstruction terms are means in [0, 1]).
        reduction: "mean" (scalar) or "none" (``(B,)``).
    """
    # float32 throughout: under bf16 autocast the loss would keep ~3 significant digits, and as the VAE alarm's
    # feature it is regressed on, so that rounding would be noise in the predicted DSC
    recon_logits, mu, logvar = recon_logits.float(), mu.float(), logvar.float()
    target = target_onehot.to(device=recon_logits.device, dtype=torch.float32)
    if recon_logits.shape != target.shape:
        raise SynthCPInputError(f"reconstruction {tuple(recon_logits.shape)} and target {tuple(target.shape)} differ")
    dice = _dice(recon_logits, target).flatten(1).mean(1)
    bce = F.binary_cross_entropy_with_logits(recon_logits, target, reduction="none").flatten(1).mean(1)
    loss = dice + bce + beta * kl_divergence(mu, logvar)
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
