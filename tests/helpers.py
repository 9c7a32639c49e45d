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
