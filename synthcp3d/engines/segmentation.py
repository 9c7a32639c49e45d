"""Segmenter ``M``: MONAI ``SupervisedTrainer`` (Dice + CE) and ``SupervisedEvaluator`` (mean Dice).

These fit MONAI's supervised workflows as they are (one network, ``image`` -> logits vs ``label``), so they are used
directly; only checkpointing bookkeeping (``to_save``) and bf16 AMP defaults are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, from_engine
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.losses import DiceCELoss, MaskedDiceLoss
from monai.transforms import AsDiscreted
from torch.optim import Optimizer

from synthcp3d.engines.workflow import attach_schedulers

__all__ = ["SegmentationLoss", "SegmenterTrainer", "create_segmenter_evaluator"]


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


def create_segmenter_evaluator(
    network: nn.Module,
    val_data_loader: Any,
    device: torch.device | str,
    num_classes: int,
    roi_size: Sequence[int] | int | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    include_background: bool = False,
    amp: bool = False,
    val_handlers: Sequence | None = None,
) -> SupervisedEvaluator:
    """``SupervisedEvaluator`` reporting ``mean_dice`` (MONAI ``MeanDice`` / ``DiceMetric``) over ``val_data_loader``.

    Args:
        network: segmenter returning logits ``(B, C, *S)``.
        val_data_loader: loader of ``{"image", "label"}`` batches (whole volumes are fine with ``roi_size``).
        device: where inference runs.
        num_classes: ``C``; predictions are argmax label maps compared with the label map.
        roi_size: sliding-window patch size (``None``: whole input at once).
        sw_batch_size, overlap: ``SlidingWindowInferer`` settings.
        include_background: count class 0 in the mean Dice.
        amp: bf16 autocast on CUDA.
        val_handlers: extra handlers (e.g. ``StatsHandler``, ``CheckpointSaver``).

    Returns:
        the evaluator; after ``run()``, ``evaluator.state.metrics["mean_dice"]``.
    """
    device = torch.device(device)
    inferer: Inferer = (
        SimpleInferer()
        if roi_size is None
        else SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    )
    use_amp = amp and device.type == "cuda"
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_data_loader,
        network=network,
        inferer=inferer,
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        key_val_metric={
            "mean_dice": MeanDice(
                include_background=include_background,
                num_classes=num_classes,
                output_transform=from_engine(["pred", "label"]),
            )
        },
        val_handlers=val_handlers,
        amp=use_amp,
        amp_kwargs={"dtype": torch.bfloat16} if use_amp else None,
    )
