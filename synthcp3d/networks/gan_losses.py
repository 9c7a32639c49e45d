"""Losses and optimizers of the SPADE GAN: hinge adversarial, discriminator feature matching, optional perceptual.

Nothing here downloads: MONAI's ``PerceptualLoss`` fetches its networks (lpips / torchvision / torch.hub) at
construction, so the perceptual term is only available from a feature extractor the user saved locally
(`LocalPerceptualLoss`); without it, feature matching carries the default recipe, as in SPADE's ablations.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss

from synthcp3d.errors import SynthCPInputError

__all__ = [
    "SPADE_OPTIMIZER_DEFAULTS",
    "FEATURE_MATCHING_WEIGHT",
    "HingeGANLoss",
    "feature_matching_loss",
    "LocalPerceptualLoss",
    "make_gan_optimizers",
]

#: SPADE's two-time-scale update rule (TTUR): Adam with beta1 = 0, beta2 = 0.9, lr_D = 4 * lr_G.
SPADE_OPTIMIZER_DEFAULTS: dict[str, Any] = {"lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.9)}
#: SPADE's lambda_feat.
FEATURE_MATCHING_WEIGHT: float = 10.0


class HingeGANLoss(nn.Module):
    """Hinge adversarial loss on (multi-scale) patch logits, averaged over the discriminators.

    ``implementation="spade"`` (default) is SPADE's hinge: D minimises ``mean(relu(1 - D(real))) +
    mean(relu(1 + D(fake)))``, G minimises ``-mean(D(fake))``. It is written out here because
    ``monai.losses.PatchAdversarialLoss(criterion="hinge")`` first squashes the logits with ``tanh``: its D loss
    never reaches 0 and its G term ``1 - tanh(D(fake))`` saturates once D is confident.
    ``implementation="monai"`` uses ``PatchAdversarialLoss`` as is, for both sides.
    """

    def __init__(self, implementation: str = "spade") -> None:
        super().__init__()
        if implementation not in ("spade", "monai"):
            raise ValueError(f"implementation must be 'spade' or 'monai', got {implementation!r}")
        self.implementation = implementation
        self.patch_loss = PatchAdversarialLoss(criterion="hinge", reduction="mean")

    @staticmethod
    def _as_list(outputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)

    def discriminator_loss(
        self, real_outputs: torch.Tensor | Sequence[torch.Tensor], fake_outputs: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Scalar D loss from the discriminator's logits on real and on (detached) fake inputs."""
        real, fake = self._as_list(real_outputs), self._as_list(fake_outputs)
        if self.implementation == "monai":
            return self.patch_loss(real, target_is_real=True, for_discriminator=True) + self.patch_loss(
                fake, target_is_real=False, for_discriminator=True
            )  # type: ignore[operator]
        # float32 reductions: under bf16 autocast the logits are bf16, whose mean would keep ~3 significant digits
        loss_real = torch.stack([F.relu(1 - o.float()).mean() for o in real]).mean()
        loss_fake = torch.stack([F.relu(1 + o.float()).mean() for o in fake]).mean()
        return loss_real + loss_fake

    def generator_loss(self, fake_outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Scalar G adversarial loss from the discriminator's logits on the generated images."""
        fake = self._as_list(fake_outputs)
        if self.implementation == "monai":
            return self.patch_loss(fake, target_is_real=True, for_discriminator=False)  # type: ignore[return-value]
        return torch.stack([-o.float().mean() for o in fake]).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]],
    fake_features: Sequence[Sequence[torch.Tensor]],
    weight: float = FEATURE_MATCHING_WEIGHT,
) -> torch.Tensor:
    """pix2pixHD / SPADE discriminator feature matching.

    Args:
        real_features: per discriminator, its intermediate feature maps on the real input (the second output of
            ``MultiScalePatchDiscriminator``); detached here.
        fake_features: the same on the generated input.
        weight: lambda_feat (SPADE: 10).

    Returns:
        scalar ``weight * sum_d sum_l L1(fake_dl, real_dl) / num_d``.
    """
    if len(real_features) != len(fake_features) or len(real_features) == 0:
        raise ValueError("real_features and fake_features must hold the same, non-zero number of discriminators")
    total = fake_features[0][0].new_zeros(())
    for real_d, fake_d in zip(real_features, fake_features):
        for real, fake in zip(real_d, fake_d):
            total = total + F.l1_loss(fake, real.detach())
    return total * weight / len(real_features)


def _load_feature_extractor(path: Path) -> nn.Module:
    """A module from a ``torch.export.save``-d program or a TorchScript file (loaded on the CPU)."""
    try:
        return torch.export.load(str(path)).module()
    except Exception:  # not an exported program: try TorchScript below
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but still the common format
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises several types for a file it cannot read
        raise SynthCPInputError(
            f"perceptual-loss network file {path} is neither a torch.export program nor a TorchScript module"
        ) from exc


class LocalPerceptualLoss(nn.Module):
    """Perceptual (feature L1) loss through a feature extractor loaded from a local file.

    The file is a ``torch.export.save``-d program or a ``torch.jit.save``-d module mapping
    ``(N, net_in_channels, H, W[, D])`` to a feature map or a list/tuple of feature maps (e.g. a VGG-19 trunk the
    user saved where it can be downloaded). In 3D with a 2D extractor (``fake_3d=True``) the volume's depth slices
    are folded into the batch. Images in [-1, 1] are passed unchanged; grey images are repeated to
    ``net_in_channels``.

    Args:
        path: the exported program / TorchScript file.
        spatial_dims: 2 or 3.
        net_in_channels: channels the extractor expects (3 for ImageNet nets).
        fake_3d: treat a 3D volume as a stack of 2D slices along its last axis.
        weight: multiplier of the loss (SPADE: lambda_vgg = 10).
    """

    def __init__(
        self, path: str | Path, spatial_dims: int, net_in_channels: int = 3, fake_3d: bool = True, weight: float = 10.0
    ) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise SynthCPInputError(f"perceptual-loss network file {path} does not exist")
        self.net = _load_feature_extractor(path)
        try:
            self.net.eval()
        except (NotImplementedError, RuntimeError):  # exported modules refuse mode switches; they are frozen anyway
            pass
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.spatial_dims, self.net_in_channels = spatial_dims, net_in_channels
        self.fake_3d, self.weight = fake_3d, weight

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims == 3 and self.fake_3d:
            x = x.movedim(-1, 1).reshape(-1, x.shape[1], *x.shape[2:-1])  # (B*D, C, H, W)
        if x.shape[1] != self.net_in_channels:
            x = x.repeat(1, self.net_in_channels // x.shape[1], *([1] * (x.ndim - 2)))
        return x

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Scalar weighted mean L1 between the extractor's features of ``fake`` and ``real`` ``(B, C, *S)``."""
        f_fake, f_real = self.net(self._prepare(fake)), self.net(self._prepare(real))
        if isinstance(f_fake, torch.Tensor):
            f_fake, f_real = [f_fake], [f_real]
        losses = [F.l1_loss(a, b.detach()) for a, b in zip(f_fake, f_real)]
        return torch.stack(losses).mean() * self.weight


def make_gan_optimizers(
    generator: nn.Module | Iterable[torch.nn.Parameter],
    discriminator: nn.Module | Iterable[torch.nn.Parameter],
    lr_g: float = SPADE_OPTIMIZER_DEFAULTS["lr_g"],
    lr_d: float = SPADE_OPTIMIZER_DEFAULTS["lr_d"],
    betas: tuple[float, float] = SPADE_OPTIMIZER_DEFAULTS["betas"],
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam optimizers for G and D with SPADE's TTUR defaults; returns ``(opt_g, opt_d)``."""
    params_g = generator.parameters() if isinstance(generator, nn.Module) else generator
    params_d = discriminator.parameters() if isinstance(discriminator, nn.Module) else discriminator
    return torch.optim.Adam(params_g, lr=lr_g, betas=betas), torch.optim.Adam(params_d, lr=lr_d, betas=betas)
