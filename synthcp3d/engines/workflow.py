"""Shared base of our multi-network trainers, and helpers every trainer uses (devices, AMP, loss logging).

Why a MONAI ``Trainer`` subclass instead of ``SupervisedTrainer`` / ``GanTrainer``: the GAN alternates two networks
on a label-conditioned discriminator with feature matching (MONAI's ``GanTrainer`` draws latent noise,
``AdversarialTrainer`` neither conditions D nor exposes its features), the comparator runs a frozen generator inside
the step and builds its targets on the fly, the VAE needs ``(recon, mu, logvar)``. Subclassing MONAI's ``Trainer``
(an ignite ``Engine``) with our own ``_iteration`` keeps MONAI's handlers, events and ``run()`` working unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.handlers import LrScheduleHandler
from torch.optim import Optimizer

from synthcp3d.utils.amp import autocast

__all__ = ["BaseTrainer", "autocast", "losses_of", "attach_schedulers", "to_device", "is_ddp"]


def to_device(x: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
    """Move ``x`` to ``device`` as a plain tensor (MONAI ``MetaTensor`` metadata is not needed in a step)."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return torch.as_tensor(x).to(device, non_blocking=non_blocking)


def is_ddp(module: nn.Module) -> bool:
    """Whether ``module`` is wrapped in ``DistributedDataParallel``."""
    return isinstance(module, nn.parallel.DistributedDataParallel)


def losses_of(output: Any) -> dict[str, float]:
    """The scalar ``loss*`` entries of an iteration output as floats (for ``StatsHandler`` / ``ProgressBar``)."""
    if not isinstance(output, Mapping):
        return {}
    out = {}
    for key, value in output.items():
        if not str(key).startswith("loss"):
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[str(key)] = float(value.detach().float().cpu())
        elif isinstance(value, (int, float)):
            out[str(key)] = float(value)
    return out


def attach_schedulers(engine: Engine, schedulers: Mapping[str, Any]) -> None:
    """Step every LR scheduler after each iteration (MONAI ``LrScheduleHandler`` at iteration level), attached
    before any checkpoint handler so that a checkpoint holds the stepped state."""
    for scheduler in schedulers.values():
        LrScheduleHandler(scheduler, print_lr=False, epoch_level=False).attach(engine)


class BaseTrainer(Trainer):
    """MONAI ``Trainer`` over several networks/optimizers; subclasses implement ``_iteration``.

    Args:
        device: where the step runs.
        train_data_loader: loader of MONAI-style dict batches (see `make_train_loader`).
        networks: name -> trainable network (possibly DDP-wrapped by ``idist.auto_model``).
        optimizers: name -> optimizer.
        schedulers: name -> LR scheduler, stepped every iteration.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        non_blocking: asynchronous host-to-device copies.
        amp: bf16 autocast on CUDA (ignored on CPU).
        amp_dtype: autocast dtype.
        train_handlers: MONAI/ignite handlers to attach (``attach(engine)``).
        max_epochs: placeholder; `run_training` sets it from its iteration budget.

    Attributes:
        to_save: everything a checkpoint must hold besides the engine and the RNG states.
    """

    def __init__(
        self,
        device: torch.device | str,
        train_data_loader: Any,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, Optimizer],
        schedulers: Mapping[str, Any] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        amp: bool = False,
        amp_dtype: torch.dtype = torch.bfloat16,
        train_handlers: Sequence | None = None,
        max_epochs: int = 1,
    ) -> None:
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            handlers=train_handlers,
            amp=False,  # MONAI's own AMP path builds a fp16 GradScaler; we autocast in bf16 ourselves
            decollate=False,
        )
        self.use_amp = amp and device.type == "cuda"
        self.amp_dtype = amp_dtype
        self.networks = dict(networks)
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        attach_schedulers(self, self.schedulers)
        self.to_save: dict[str, Any] = {**self.networks, **self.optimizers, **self.schedulers}

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this trainer's forward passes."""
        return autocast(self.state.device, self.use_amp, self.amp_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch entry to this trainer's device."""
        return to_device(x, self.state.device, self.non_blocking)
