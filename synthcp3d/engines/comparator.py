"""Comparator ``F`` training on cross-validated predictions, synthesizing ``x̂ = G(ŷ)`` on the fly.

A batch holds the image ``x``, the ground truth ``y`` and a cross-validation prediction ``ŷ`` (label map), optionally
its softmax. A frozen generator makes ``x̂ = G(onehot(ŷ))`` under ``no_grad`` (skipped for Direct Prediction); the
targets come from ``y`` and ``ŷ``: per-class IoU/DSC (`per_class_quality`, NaN = undefined) and the error map
(`error_map`); the loss is `comparator_loss` (mean L1 + mean BCE, paper eq. 8).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.optim import Optimizer

from synthcp3d.engines.distributed import unwrap
from synthcp3d.engines.workflow import BaseTrainer
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.comparator import comparator_loss
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.targets import error_map, per_class_quality

__all__ = ["ComparatorTrainer", "comparator_optimizer", "comparator_uses_synthesis"]


def comparator_optimizer(network: nn.Module, lr: float, weight_decay: float, name: str = "adamw") -> Optimizer:
    """The comparator's optimizer, weight decay decoupled from the adaptive step: ``"adamw"`` or ``"radam"``.

    Coupled L2 (``Adam(weight_decay=...)``) is not offered: it divides the decay by the gradient's running scale, so a
    weight whose loss gradient is small shrinks by about ``lr`` per step whatever its size; in the comparator the deep
    encoder stages get little gradient, and on the pancreas demo study three of six comparators ended with pooled
    features that no longer varied across cases (the quality head then predicts a constant).

    ``"radam"`` (``RAdam(decoupled_weight_decay=True)``): Adam's first steps are sign steps of size ``lr`` on every
    weight; in the comparator they add a filter-wide, case-independent component that its per-sample GroupNorm then
    normalises by, wiping out the differences between cases within ~10 steps, after which the quality head predicts
    the training mean until the encoder recovers (150-400+ iterations, seed-dependent). RAdam's variance rectification
    makes those early steps small: measured on the pancreas study, it removed the one remaining collapse
    (``benchmarks/results/pancreas_demo_study/comparator_collapse_cause.md``).
    """
    if name == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "radam":
        return torch.optim.RAdam(network.parameters(), lr=lr, weight_decay=weight_decay, decoupled_weight_decay=True)
    raise SynthCPInputError(f"comparator optimizer must be 'adamw' or 'radam', got {name!r}")


def comparator_uses_synthesis(comparator: nn.Module) -> bool:
    """Whether ``comparator`` consumes a synthesis (False for Direct Prediction, ``use_synthesis=False``)."""
    flags = [m.use_synthesis for m in unwrap(comparator).modules() if hasattr(m, "use_synthesis")]
    return any(flags) if flags else True


class ComparatorTrainer(BaseTrainer):
    """Train the comparator on ``{"image", "label", "pred"[, "prob"]}`` batches.

    Args:
        device: where the step runs.
        train_data_loader: loader of ``image (B, Ci, *S)``, ``label (B, 1, *S)``, ``pred (B, 1, *S)`` and optionally
            ``prob (B, C, *S)`` batches (the cross-validation manifest's entries).
        comparator: e.g. `build_comparator(...)`; forward ``(image, segmentation, synthesis) -> dict``.
        optimizer: its optimizer.
        num_classes: ``C``.
        generator: frozen synthesizer ``onehot (B, C, *S) -> image``; required unless the comparator is Direct
            Prediction (``use_synthesis=False``), where it is ignored.
        metric: quality target: ``"iou"`` (2D studies) or ``"dice"`` (3D).
        ignore_index: label value excluded from the targets (and one-hot encoded as zeros for ``G``); must be 2..255.
        segmentation_input: what the comparator receives as ``ŷ``: ``"onehot"`` (of ``pred``) or ``"prob"``
            (the batch's softmax; a comparator built with ``seg_input="softmax"``).
        loss_function: default `comparator_loss`; ``(outputs, quality_target, error_target) -> (total, parts)``.
        schedulers: name -> LR scheduler stepped every iteration.
        kwargs: `BaseTrainer` arguments.
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        comparator: nn.Module,
        optimizer: Optimizer,
        num_classes: int,
        generator: nn.Module | None = None,
        metric: Literal["iou", "dice"] = "dice",
        ignore_index: int | None = None,
        segmentation_input: Literal["onehot", "prob"] = "onehot",
        loss_function: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        prob_key: str = "prob",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device,
            train_data_loader,
            networks={"comparator": comparator},
            optimizers={"optimizer": optimizer},
            schedulers=schedulers,
            **kwargs,
        )
        if segmentation_input not in ("onehot", "prob"):
            raise ValueError(f"segmentation_input must be 'onehot' or 'prob', got {segmentation_input!r}")
        self.use_synthesis = comparator_uses_synthesis(comparator)
        if self.use_synthesis and generator is None:
            raise ValueError("this comparator compares with a synthesis: pass the trained generator")
        self.comparator, self.optimizer = comparator, optimizer
        self.generator: nn.Module | None = None
        if generator is not None and self.use_synthesis:
            self.generator = generator.to(self.state.device).eval().requires_grad_(False)
        self.num_classes, self.metric, self.ignore_index = num_classes, metric, ignore_index
        self.segmentation_input = segmentation_input
        if loss_function is None:
            loss_function = (
                comparator_loss
                if ignore_index is None
                else lambda out, q, e: comparator_loss(out, q, e, ignore_index=ignore_index)
            )
        self.loss_function = loss_function
        self.keys = {"image": image_key, "label": label_key, "pred": pred_key, "prob": prob_key}

    @torch.no_grad()
    def synthesize(self, pred: torch.Tensor) -> torch.Tensor | None:
        """``x̂ = G(onehot(pred))`` with the frozen generator (``None`` for Direct Prediction)."""
        if self.generator is None:
            return None
        self.generator.eval()
        with self.autocast():
            return self.generator(one_hot_labels(pred, self.num_classes, self.ignore_index)).float()

    def _iteration(self, engine: ComparatorTrainer, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        keys = engine.keys
        image = engine.to_device(batchdata[keys["image"]]).float()
        label = engine.to_device(batchdata[keys["label"]])
        pred = engine.to_device(batchdata[keys["pred"]])
        if engine.segmentation_input == "prob":
            if keys["prob"] not in batchdata:
                raise ValueError(f"segmentation_input='prob' needs '{keys['prob']}' in every batch")
            segmentation = engine.to_device(batchdata[keys["prob"]]).float()
        else:
            segmentation = one_hot_labels(pred, engine.num_classes, engine.ignore_index)
        synthesis = engine.synthesize(pred)
        quality_target = per_class_quality(pred, label, engine.num_classes, engine.metric, engine.ignore_index)
        error_target = error_map(pred, label, engine.ignore_index).unsqueeze(1)

        engine.comparator.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine.autocast():
            outputs = engine.comparator(image, segmentation, synthesis)
        outputs = {k: v.float() for k, v in outputs.items()}
        loss, parts = engine.loss_function(outputs, quality_target, error_target)
        loss.backward()
        engine.optimizer.step()
        return {"loss": loss.detach(), **{f"loss_{k}": v.detach() for k, v in parts.items()}}
