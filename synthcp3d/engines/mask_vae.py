"""Mask VAE training (VAE alarm): reconstruct one-hot ground-truth masks, loss = Dice + BCE + beta * KL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from synthcp3d.engines.workflow import BaseTrainer
from synthcp3d.networks.mask_vae import vae_loss
from synthcp3d.networks.synthesizer import one_hot_labels

__all__ = ["MaskVAETrainer"]


class MaskVAETrainer(BaseTrainer):
    """Train a `MaskVAE` on ``batch["label"]`` ``(B, 1, *in_shape)`` (ground-truth masks, already cropped/resized).

    Args:
        device: where the step runs.
        train_data_loader: loader of ``{"label": (B, 1, *in_shape)}`` batches.
        vae: ``onehot (B, C, *S) -> (recon_logits, mu, logvar)``.
        optimizer: its optimizer.
        num_classes: ``C``.
        beta: KL weight.
        loss_function: default `vae_loss` ``(recon_logits, target_onehot, mu, logvar, beta) -> scalar``.
        schedulers: name -> LR scheduler stepped every iteration.
        label_key: batch key of the mask.
        kwargs: `BaseTrainer` arguments.
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        vae: nn.Module,
        optimizer: Optimizer,
        num_classes: int,
        beta: float = 1e-3,
        loss_function: Callable[..., torch.Tensor] = vae_loss,
        schedulers: Mapping[str, Any] | None = None,
        label_key: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device,
            train_data_loader,
            networks={"vae": vae},
            optimizers={"optimizer": optimizer},
            schedulers=schedulers,
            **kwargs,
        )
        self.vae, self.optimizer = vae, optimizer
        self.num_classes, self.beta, self.loss_function, self.label_key = num_classes, beta, loss_function, label_key

    def _iteration(self, engine: MaskVAETrainer, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        onehot = one_hot_labels(engine.to_device(batchdata[engine.label_key]), engine.num_classes)
        engine.vae.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine.autocast():
            recon, mu, logvar = engine.vae(onehot)
        loss = engine.loss_function(recon.float(), onehot, mu.float(), logvar.float(), beta=engine.beta)
        loss.backward()
        engine.optimizer.step()
        return {"loss": loss.detach()}
