"""Synthesizer ``G`` training: SPADE's label-to-image GAN (hinge adversarial + feature matching [+ perceptual]).

Each iteration (pix2pix order): ``fake = G(onehot(y))``; a D step on ``concat(fake.detach(), y)`` vs
``concat(x, y)`` with the hinge loss; then a G step with the hinge generator term, discriminator feature matching
(x10) and an optional perceptual term. The discriminator sees fake and real in one forward pass (as SPADE does), so
DDP sees exactly one forward per backward; the G step's backward through D runs under ``no_sync`` since D's
gradients from it are discarded anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from synthcp3d.engines.workflow import BaseTrainer, is_ddp
from synthcp3d.networks.gan_losses import FEATURE_MATCHING_WEIGHT, HingeGANLoss, feature_matching_loss
from synthcp3d.networks.synthesizer import discriminator_input, one_hot_labels

__all__ = ["GanTrainer", "class_mean_error"]


def class_mean_error(fake: torch.Tensor, real: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Mean over (sample, class present) of ``|mean_c(fake) - mean_c(real)|``, averaged over image channels.

    Args:
        fake, real: ``(B, Ci, *S)`` images.
        onehot: ``(B, C, *S)`` one-hot labels (all-zero voxels belong to no class).

    Returns:
        a scalar (0 when no class is present).
    """
    dims = tuple(range(2, onehot.ndim))
    weights = onehot.float()
    counts = weights.sum(dims)  # (B, C)
    diff = torch.einsum("bk...,bc...->bkc", fake - real, weights)  # (B, Ci, C): summed error per class
    per_class = (diff / counts.clamp(min=1)[:, None]).abs().mean(1)  # (B, C)
    present = counts > 0
    return per_class[present].mean() if present.any() else fake.sum() * 0


def _split(outputs: Sequence[Any], batch: int) -> tuple[list[Any], list[Any]]:
    """Split (nested lists of) tensors along the batch: first ``batch`` rows vs the rest."""
    first, second = [], []
    for o in outputs:
        if isinstance(o, torch.Tensor):
            first.append(o[:batch])
            second.append(o[batch:])
        else:
            a, b = _split(o, batch)
            first.append(a)
            second.append(b)
    return first, second


class GanTrainer(BaseTrainer):
    """Train a SPADE generator and a multi-scale patch discriminator on ``(label, image)`` pairs.

    Args:
        device: where the step runs.
        train_data_loader: loader of ``{"image": (B, Ci, *S), "label": (B, 1, *S)}`` batches, images in [-1, 1].
        generator: ``onehot (B, C, *S) -> image (B, Ci, *S)`` (e.g. `SPADEGenerator`).
        discriminator: ``concat(image, onehot) -> (outputs, features)`` (e.g. `build_discriminator`).
        g_optimizer, d_optimizer: e.g. from `make_gan_optimizers` (Adam, betas (0, 0.9), TTUR).
        num_classes: ``C``.
        ignore_index: label value encoded as an all-zero one-hot vector.
        adversarial_loss: default `HingeGANLoss` (``discriminator_loss(real, fake)``, ``generator_loss(fake)``).
        feature_matching_weight: lambda_feat (SPADE: 10; 0 disables).
        perceptual_loss: optional ``(fake, real) -> scalar`` (e.g. `LocalPerceptualLoss`, weight included); a module
            is moved to ``device``.
        reconstruction_weight: weight of an L1 term ``mean |G(y) - x|`` (0 disables; SPADE has none). A deviation
            from SPADE for where no perceptual network is available offline: it anchors each label's intensity,
            which the adversarial and feature-matching terms alone reach only after long training.
        class_mean_weight: weight of a per-class intensity term: the mean over (sample, class present in ``y``) of
            ``|mean of G(y) over the class - mean of x over the class|`` (0 disables; not in SPADE). The voxel-wise
            L1 is dominated by the largest class, so a small organ's mean intensity can stay biased; this term
            weighs every class equally and leaves the texture to the adversarial terms.
        schedulers: name -> LR scheduler stepped every iteration.
        image_key, label_key: batch keys.
        kwargs: `BaseTrainer` arguments (``epoch_length``, ``amp``, ``train_handlers``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        num_classes: int,
        ignore_index: int | None = None,
        adversarial_loss: HingeGANLoss | None = None,
        feature_matching_weight: float = FEATURE_MATCHING_WEIGHT,
        perceptual_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reconstruction_weight: float = 0.0,
        class_mean_weight: float = 0.0,
        schedulers: Mapping[str, Any] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device,
            train_data_loader,
            networks={"generator": generator, "discriminator": discriminator},
            optimizers={"optimizer_g": g_optimizer, "optimizer_d": d_optimizer},
            schedulers=schedulers,
            **kwargs,
        )
        self.generator, self.discriminator = generator, discriminator
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.adversarial_loss = adversarial_loss if adversarial_loss is not None else HingeGANLoss()
        self.feature_matching_weight = feature_matching_weight
        if isinstance(perceptual_loss, nn.Module):  # `LocalPerceptualLoss` loads its network on the CPU
            perceptual_loss = perceptual_loss.to(self.state.device)
        self.perceptual_loss = perceptual_loss
        self.reconstruction_weight = float(reconstruction_weight)
        self.class_mean_weight = float(class_mean_weight)
        self.image_key, self.label_key = image_key, label_key

    def _iteration(self, engine: GanTrainer, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        real = engine.to_device(batchdata[engine.image_key]).float()
        onehot = one_hot_labels(engine.to_device(batchdata[engine.label_key]), engine.num_classes, engine.ignore_index)
        batch = real.shape[0]
        G, D = engine.generator, engine.discriminator
        G.train()
        D.train()

        with engine.autocast():
            fake = G(onehot)

        # Discriminator step on fake (detached) and real, one forward pass.
        engine.d_optimizer.zero_grad(set_to_none=True)
        with engine.autocast():
            outputs, _ = D(torch.cat([discriminator_input(fake.detach(), onehot), discriminator_input(real, onehot)]))
            fake_out, real_out = _split(outputs, batch)
            loss_d = engine.adversarial_loss.discriminator_loss(real_out, fake_out)
        loss_d.backward()
        engine.d_optimizer.step()

        # Generator step through the updated discriminator; D's gradients from it are dropped at the next D step.
        engine.g_optimizer.zero_grad(set_to_none=True)
        sync = D.no_sync() if is_ddp(D) else contextlib.nullcontext()
        with sync:
            with engine.autocast():
                outputs, features = D(torch.cat([discriminator_input(fake, onehot), discriminator_input(real, onehot)]))
                fake_out, _ = _split(outputs, batch)
                fake_feat, real_feat = _split(features, batch)
                loss_adv = engine.adversarial_loss.generator_loss(fake_out)
                loss_g = loss_adv
                out = {"loss_g_adv": loss_adv.detach()}
                if engine.feature_matching_weight > 0:
                    loss_fm = feature_matching_loss(real_feat, fake_feat, weight=engine.feature_matching_weight)
                    loss_g = loss_g + loss_fm
                    out["loss_g_fm"] = loss_fm.detach()
                if engine.perceptual_loss is not None:
                    loss_p = engine.perceptual_loss(fake, real)
                    loss_g = loss_g + loss_p
                    out["loss_g_perceptual"] = loss_p.detach()
                if engine.reconstruction_weight > 0:
                    loss_l1 = engine.reconstruction_weight * (fake.float() - real).abs().mean()
                    loss_g = loss_g + loss_l1
                    out["loss_g_l1"] = loss_l1.detach()
                if engine.class_mean_weight > 0:
                    loss_cm = engine.class_mean_weight * class_mean_error(fake.float(), real, onehot)
                    loss_g = loss_g + loss_cm
                    out["loss_g_class_mean"] = loss_cm.detach()
            loss_g.backward()
        engine.g_optimizer.step()
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), **out}
