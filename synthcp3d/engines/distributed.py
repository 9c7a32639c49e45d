"""Distributed training with ``ignite.distributed``: one code path for CPU, one GPU, or N GPUs under ``torchrun``.

- networks: `prepare_network` (``idist.auto_model``: moves to the process' device, wraps in DDP when world size > 1);
- data: `make_train_loader` (``idist.auto_dataloader`` with a `ResumableSampler`, a ``DistributedSampler``);
- checkpoints and logs: rank 0 only (`run_training`);
- launching: `run_distributed` spawns ``nproc_per_node`` processes (``idist.Parallel``); under ``torchrun`` pass no
  ``nproc_per_node`` and it joins the processes torchrun started.

Example (2 GPUs): ``torchrun --nproc_per_node 2 train.py`` where ``train.py`` calls
``run_distributed(main, cfg, backend="nccl")`` and ``main(local_rank, cfg)`` builds the trainer with
``prepare_network`` and ``make_train_loader`` and calls ``run_training``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ignite.distributed as idist
import torch
import torch.nn as nn

__all__ = ["prepare_network", "run_distributed", "device", "unwrap"]


def device() -> torch.device:
    """This process' device (``cuda:<local_rank>`` under a GPU backend, else CPU or the single GPU)."""
    return idist.device()


def prepare_network(network: nn.Module, sync_bn: bool = False, **ddp_kwargs: Any) -> nn.Module:
    """Move ``network`` to this process' device and wrap it in DDP if the world size is > 1 (``idist.auto_model``).

    Args:
        network: the model; build it identically on every rank (DDP broadcasts rank 0's weights at wrapping).
        sync_bn: convert batch norms to ``SyncBatchNorm`` (GPU backends).
        ddp_kwargs: passed to ``DistributedDataParallel``.
    """
    return idist.auto_model(network, sync_bn=sync_bn, **ddp_kwargs)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (or ``network`` itself); the one unwrapping of the package.

    Own code because neither torch nor MONAI has it for modules: ``monai.networks.utils.get_state_dict`` unwraps
    the same two wrappers but returns the state dict.
    """
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


def run_distributed(
    fn: Callable[..., Any],
    *args: Any,
    backend: str | None = None,
    nproc_per_node: int | None = None,
    start_method: str = "spawn",
    master_port: int | None = None,
    **kwargs: Any,
) -> None:
    """Run ``fn(local_rank, *args, **kwargs)`` on every process of a distributed configuration.

    Args:
        fn: a module-level function (picklable: spawned processes import it).
        args, kwargs: its arguments.
        backend: ``None`` (single process), ``"nccl"`` (GPUs) or ``"gloo"`` (CPU).
        nproc_per_node: processes to spawn here; ``None`` under ``torchrun`` (the processes exist already).
        start_method: how spawned processes start: ``"spawn"`` (safe default; re-imports everything) or
            ``"fork"`` (fast, CPU only; call ``torch.set_num_threads`` first thing in ``fn`` as DataLoader workers do).
        master_port: rendezvous port of spawned processes (default: ignite's, 2222).
    """
    spawn: dict[str, Any] = {}
    if nproc_per_node is not None:
        spawn["start_method"] = start_method
        if master_port is not None:
            spawn["master_port"] = master_port
    with idist.Parallel(backend=backend, nproc_per_node=nproc_per_node, **spawn) as parallel:
        parallel.run(fn, *args, **kwargs)
