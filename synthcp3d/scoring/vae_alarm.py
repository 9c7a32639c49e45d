"""VAE alarm (Liu, Xia, Yang, Yuille, Xu, "Alarm system for segmentation algorithm based on shape model",
ICCV 2019; no official code, reimplemented): a shape prior judges a predicted mask.

A mask VAE (``synthcp3d.networks.MaskVAE``) trained on ground-truth masks only (tight foreground crop at its fixed
``in_shape``) is frozen; for a predicted mask it gives one number (:func:`per_class_vae_feature` repeats it per
class), and a per-class linear regressor (:class:`~synthcp3d.scoring.regression.LinearQualityRegressor`) fitted on
cross-validated predictions maps it to each class's quality (the scorer ``"vae_alarm"``).

Features (:func:`vae_alarm_feature`):

- ``"loss"`` (default): the VAE's own loss on the predicted mask (reconstruction + beta·KL, eval mode so the
  posterior mean is decoded), as Liu et al. describe: a mask far from the learned shape manifold reconstructs
  badly and costs more.
- ``"dice"``: Dice between the mask's class of interest and its reconstruction (``MaskVAE.reconstruction_dice``),
  bounded and in the same units as the target; an alternative worth comparing.

The cropping / resampling of a predicted mask to ``in_shape`` is the caller's (the alarm pipeline's) job.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.mask_vae import vae_loss
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, inference_mode, register_scorer
from synthcp3d.scoring.regression import LinearQualityRegressor

__all__ = ["vae_alarm_feature", "per_class_vae_feature"]

VAEFeature = Literal["loss", "dice"]


def vae_alarm_feature(
    vae: nn.Module,
    mask_onehot: torch.Tensor,
    feature: VAEFeature = "loss",
    class_index: int = -1,
    beta: float | None = None,
) -> torch.Tensor:
    """One shape feature per predicted mask.

    Args:
        vae: trained ``MaskVAE`` (``forward(mask) -> (recon_logits, mu, logvar)``), used frozen in eval mode.
        mask_onehot: predicted masks, one-hot ``(B, C, *in_shape)``.
        feature: ``"loss"`` (VAE loss per mask, default) or ``"dice"`` (reconstruction Dice of ``class_index``).
        class_index: the class of interest for ``"dice"`` (default: the last class, the tumour in MSD Task07).
        beta: KL weight for ``"loss"`` (``None``: ``vae_loss``'s default).

    Returns:
        ``(B,)`` float32.
    """
    check_class_tensor(mask_onehot, "mask_onehot", min_ndim=3)
    in_shape = getattr(vae, "in_shape", None)
    if in_shape is not None and tuple(mask_onehot.shape[2:]) != tuple(in_shape):
        raise SynthCPInputError(
            f"mask spatial shape {tuple(mask_onehot.shape[2:])} differs from the VAE's in_shape {tuple(in_shape)}; "
            "crop/resample the predicted mask first"
        )
    mask_onehot = mask_onehot.float()
    with inference_mode(vae):
        if feature == "dice":
            return vae.reconstruction_dice(mask_onehot)[:, class_index].float()
        if feature == "loss":
            kwargs = {} if beta is None else {"beta": beta}
            recon_logits, mu, logvar = vae(mask_onehot)
            return vae_loss(recon_logits, mask_onehot, mu, logvar, reduction="none", **kwargs).float()
    raise SynthCPInputError(f"unknown VAE alarm feature {feature!r}; use 'loss' or 'dice'")


def per_class_vae_feature(vae: nn.Module, mask_onehot: torch.Tensor, feature: VAEFeature = "loss") -> np.ndarray:
    """The VAE alarm's feature of one mask ``(1, C, *in_shape)`` as one value per class ``(C,)``, the input of a
    per-class linear regressor (:class:`~synthcp3d.scoring.regression.LinearQualityRegressor`).

    ``"loss"`` (Liu et al., ICCV 2019): the VAE's loss on the mask, the same number in every column (each class's
    regressor maps it to that class's quality). ``"dice"`` (a named variant): per-class Dice between the mask and its
    reconstruction (NaN: class absent from both).
    """
    if feature == "dice":
        with inference_mode(vae):
            return vae.reconstruction_dice(mask_onehot.float())[0].cpu().numpy()
    loss = float(vae_alarm_feature(vae, mask_onehot, feature=feature)[0])
    return np.full(mask_onehot.shape[1], loss, dtype=np.float64)


@register_scorer(
    "vae_alarm",
    inputs=("vae", "vae_mask", "vae_regressor"),
    description="VAE alarm: per-class linear map from a mask-VAE feature (its loss, as published) to the quality",
)
def _vae_alarm(vae: nn.Module, vae_mask: torch.Tensor, vae_regressor: LinearQualityRegressor) -> ScoreOutput:
    """``vae_mask`` ``(B, C, *in_shape)``; ``vae_regressor`` fitted on :func:`per_class_vae_feature` of the
    cross-validated predictions, its ``vae_feature`` attribute naming the feature (``"loss"`` when absent).
    A NaN feature (the ``"dice"`` variant of a class absent from mask and reconstruction) predicts 0."""
    feature = getattr(vae_regressor, "vae_feature", "loss")
    features = np.stack([per_class_vae_feature(vae, mask[None], feature) for mask in vae_mask])
    return ScoreOutput(quality=vae_regressor.predict(features).to(vae_mask.device))
