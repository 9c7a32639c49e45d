"""AE baseline for anomaly segmentation (the paper's ref. [2], as in the StreetHazards benchmark): per-pixel l1 error.

``score(i) = mean_c |x_c(i) - AE(x)_c(i)|`` over the image channels; high = poorly reconstructed = anomalous.
The auto-encoder (``synthcp3d.networks.build_image_autoencoder``) is trained on in-distribution images only.
"""

from __future__ import annotations

import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, inference_mode, register_scorer

__all__ = ["reconstruction_l1", "autoencoder_score"]


def reconstruction_l1(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Channel-mean absolute error: ``(B, Cin, *S)`` twice -> ``(B, *S)``."""
    if x.shape != reconstruction.shape:
        raise SynthCPInputError(
            f"reconstruction shape {tuple(reconstruction.shape)} differs from image shape {tuple(x.shape)}; "
            "the image size must be divisible by the auto-encoder's total stride"
        )
    return (x.float() - reconstruction.float()).abs().mean(dim=1)


def autoencoder_score(autoencoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Anomaly map ``(B, *S)`` of image ``x (B, Cin, *S)``: l1 error of ``autoencoder(x)`` (eval mode, no grad)."""
    check_class_tensor(x, "image", min_ndim=3)
    with inference_mode(autoencoder):
        reconstruction = autoencoder(x)
    if isinstance(reconstruction, (tuple, list)):  # variational auto-encoders also return (mu, logvar, ...)
        reconstruction = reconstruction[0]
    return reconstruction_l1(x, reconstruction)


@register_scorer("autoencoder", inputs=("autoencoder", "image"), description="auto-encoder l1 reconstruction error")
def _autoencoder(autoencoder: nn.Module, image: torch.Tensor) -> ScoreOutput:
    return ScoreOutput(anomaly=autoencoder_score(autoencoder, image))
