"""What both synthetic 2D generators need to write a data set: argument checks at the boundary, deterministic PNG
writes, and ``staged_dataset`` (build in a temporary folder, move into place when complete, never over a folder
this package did not generate)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json

__all__ = ["SYNTHETIC_MARKER", "check_generator_args", "save_png", "staged_dataset"]

SYNTHETIC_MARKER = "synthcp_synthetic.json"  # written at a generated root; marks it safe to regenerate over


def check_generator_args(cases: int, seed: int, size: Sequence[int], **counts: int | None) -> tuple[int, int]:
    """Validate a generator's arguments at the boundary and return ``size`` as ``(W, H)``."""
    for name, value in {"cases": cases, **counts}.items():
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
            raise SynthCPInputError(f"{name} must be a positive whole number of images, got {value!r}.")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise SynthCPInputError(f"seed must be a non-negative integer, got {seed!r}.")
    if len(size) != 2 or any(not isinstance(v, (int, np.integer)) for v in size) or size[0] < 64 or size[1] < 32:
        raise SynthCPInputError(f"size must be (width, height) in pixels, at least (64, 32), got {tuple(size)!r}.")
    return int(size[0]), int(size[1])


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Save (H, W) uint8 / uint16 or (H, W, 3|4) uint8 as PNG (Pillow writes no timestamp: same array, same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


@contextlib.contextmanager
def staged_dataset(root: str | os.PathLike, marker: dict[str, Any]) -> Iterator[Path]:
    """Build a data set in a temporary sibling folder and move it to ``root`` only when complete.

    A crash leaves no half data set. An existing ``root`` is replaced only if this package generated it (it holds
    ``SYNTHETIC_MARKER``): a real data set that happens to sit there is never deleted.

    Raises:
        SynthCPInputError: ``root`` exists, is not empty and was not generated here.
    """
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / SYNTHETIC_MARKER).is_file())):
        raise SynthCPInputError(
            f"{root} already exists and was not made by this generator; remove it or choose another output folder."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        atomic_save_json(marker, tmp / SYNTHETIC_MARKER)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
