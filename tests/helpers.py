"""Assertions and utilities shared by several test files (``from helpers import ...``; ``tests/`` is on the path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def assert_backward(module: torch.nn.Module, min_nonzero: float = 0.8) -> None:
    """Every parameter got a finite gradient, and at least ``min_nonzero`` of the parameter tensors a non-zero one
    (a bias right before a normalisation legitimately gets ~0)."""
    params = [p for p in module.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    assert all(torch.isfinite(p.grad).all() for p in params)
    nonzero = sum(bool(p.grad.abs().sum() > 0) for p in params)
    assert nonzero / len(params) >= min_nonzero


def relative_files(root: Path) -> list[Path]:
    """Every file below ``root``, as sorted paths relative to it."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def needs_cuda(test: Callable) -> Callable:
    """Decorator of a test that needs CUDA: marked ``gpu`` (``pytest -m gpu`` selects it, as ``make gpu-check`` does)
    and skipped where no CUDA device is available."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


#: tiny Cityscapes study settings (`run_study(..., extra=...)`): every network at its smallest valid size, 2 iterations
TINY_CITYSCAPES = {
    "common": {
        "image_size": [64, 32],
        "segmenter_layers": [1, 1, 1, 1],
        "segmenter_channels": [8, 8, 16, 16],
        "fcn_width": 8,
        "generator_channels": [16, 8],
        "generator_spade_hidden": 8,
        "discriminator_num_d": 1,
        "discriminator_layers": 1,
        "discriminator_channels": 8,
        "comparator_channels": [8, 8, 16, 16],
        "confidnet_hidden": [8],
        "vae_shape": [16, 32],
        "vae_channels": [4, 8],
        "vae_latent": 4,
        "mc_samples": 2,
        "progress": False,
        "checkpoint_every": 100,
    },
    "train_segmenter": {"iterations": 2, "batch_size": 2},
    "crossval": {"iterations": 2, "batch_size": 2},
    "train_synthesizer": {"iterations": 2, "batch_size": 2},
    "train_comparator": {"iterations": 2, "batch_size": 2},
    "train_baselines": {"iterations": 2, "batch_size": 2},
}


#: tiny pancreas bundle settings (`make_untrained_bundle(folder, TINY_PANCREAS)`): small but valid for every network
#: (AH-Net needs multiples of 32 here, the comparator's and the VAE's deepest instance norms more than one voxel)
TINY_PANCREAS = {
    "spacing": [2.0, 2.0, 2.5],
    "patch_size": [32, 32, 32],
    "roi_size": [64, 32, 32],
    "vae_shape": [32, 32, 32],
    "ahnet_layers": [1, 1, 1, 1],
    "psp_block_num": 0,
    "generator_channels": [16, 8],
    "comparator_channels": [8, 16, 32, 64],
    "vae_channels": [4, 8, 16, 32],
    "vae_latent": 8,
    "settings_name": "tiny-untrained",
}
