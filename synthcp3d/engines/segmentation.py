"""Segmenter ``M``: MONAI ``SupervisedTrainer`` with a Dice + CE loss.

This fits MONAI's supervised workflow as it is (one network, ``image`` -> logits vs ``label``), so it is used
directly; only checkpointing bookkeeping (``to_save``) and bf16 AMP defaults are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss, MaskedDiceLoss
from torch.optim import Optimizer

from synthcp3d.engines.workflow import attach_schedulers

__all__ = ["SegmentationLoss", "SegmenterTrainer"]


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on logits ``(B, C, *S)`` against a label map ``(B, 1, *S)``.

    Without ``ignore_index`` this is ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` with the given
    ``include_background``, ``batch`` and ``class_weights``. Small structures (a tumour that is 10⁻³ of a patch, absent
    from many patches) need ``include_background=False, batch=True`` (the Dice of a class summed over the batch, so a
    patch without the class does not reward predicting nothing) and a class-weighted CE; MONAI applies
    ``class_weights`` to both terms. MONAI's DiceCELoss has no ignore label (Cityscapes' 255), so with one the Dice
    term is ``MaskedDiceLoss`` over the valid pixels and the CE term is torch's ``cross_entropy(ignore_index=...)``,
    with the same ``include_background``, ``batch`` and ``class_weights``.
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = True,
        batch: bool = False,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce
        weight = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        if ignore_index is None:
            self.loss = DiceCELoss(
                to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                include_background=include_background, batch=batch, weight=weight,
            )
        else:
            # as DiceCELoss does: without the background in the Dice term, its weight is dropped there only
            dice_weight = weight[1:] if weight is not None and not include_background else weight
            self.dice = MaskedDiceLoss(
                to_onehot_y=True, softmax=True, include_background=include_background, batch=batch, weight=dice_weight
            )
            self.register_buffer("ce_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.ndim == logits.ndim - 1:
            label = label.unsqueeze(1)
        if self.ignore_index is None:
            return self.loss(logits, label)
        label = label.long()
        valid = label != self.ignore_index
        dice = self.dice(logits, torch.where(valid, label, 0), mask=valid)
        ce = F.cross_entropy(logits.float(), label[:, 0], weight=self.ce_weight, ignore_index=self.ignore_index)
        return self.lambda_dice * dice + self.lambda_ce * ce


class SegmenterTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for a segmenter: ``batch["image"]`` -> logits, Dice+CE against ``batch["label"]``.

    Args:
        device: where the step runs.
        train_data_loader: loader of ``{"image": (B, Ci, *S), "label": (B, 1, *S)}`` batches.
        network: segmenter returning logits ``(B, C, *S)`` (DDP-wrapped by ``idist.auto_model`` if distributed).
        optimizer: its optimizer.
        loss_function: default `SegmentationLoss` (``ignore_index`` applies to it).
        ignore_index: label value excluded from the default loss.
        lr_scheduler: stepped every iteration and checkpointed.
        amp: bf16 autocast on CUDA (ignored on CPU).
        kwargs: more ``SupervisedTrainer`` arguments (``epoch_length``, ``train_handlers``, ``inferer``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: nn.Module | None = None,
        ignore_index: int | None = None,
        lr_scheduler: Any | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype = torch.bfloat16,
        max_epochs: int = 1,
        **kwargs: Any,
    ) -> None:
        device = torch.device(device)
        use_amp = amp and device.type == "cuda"
        kwargs.setdefault("decollate", False)  # training needs no per-sample postprocessing
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function if loss_function is not None else SegmentationLoss(ignore_index),
            amp=use_amp,
            amp_kwargs={"dtype": amp_dtype} if use_amp else None,
            **kwargs,
        )
        self.schedulers = {"scheduler": lr_scheduler} if lr_scheduler is not None else {}
        attach_schedulers(self, self.schedulers)
        self.to_save: dict[str, Any] = {"network": network, "optimizer": optimizer, **self.schedulers}
