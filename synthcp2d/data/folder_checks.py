"""Boundary checks shared by the 2D data set readers (Cityscapes, StreetHazards): folders, PNG labels, sizes.

Every failure is a :class:`~synthcp3d.errors.SynthCPInputError` with one sentence naming the data set and the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from synthcp3d.errors import SynthCPInputError

__all__ = ["existing_folder", "image_size", "read_label_png", "shown_values", "check_pair_size"]


def existing_folder(root: str | os.PathLike, dataset: str) -> Path:
    """``root`` (``~`` expanded) if it is an existing folder, else a one-line error naming ``dataset``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise SynthCPInputError(f"{dataset} folder {root} does not exist.")
    if not root.is_dir():
        raise SynthCPInputError(f"{dataset} folder {root} is a file, not a folder.")
    return root


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(W, H)`` of an image file, from its header only."""
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as err:
        raise SynthCPInputError(f"Cannot read image {path} ({err}).") from err


def read_label_png(path: str | os.PathLike, what: str, expected: str) -> np.ndarray:
    """Read a single-channel label image as an ``(H, W)`` array.

    Args:
        path: the label file.
        what: how messages call it, e.g. ``"Cityscapes label"``.
        expected: what a multi-channel file should have been, e.g. ``"a single-channel image of class values"``.

    Raises:
        SynthCPInputError: the file is missing, unreadable or has more than one channel.
    """
    path = Path(path)
    if not path.is_file():
        raise SynthCPInputError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except OSError as err:
        raise SynthCPInputError(f"Cannot read {what} {path} as an image ({err}).") from err
    if arr.ndim != 2:
        raise SynthCPInputError(f"{what} {path} has {arr.shape[-1]} channels (mode {mode}); expected {expected}.")
    return arr


def shown_values(values: Iterable[int], limit: int = 6) -> str:
    """``"3, 7, 200, ..."``: the first ``limit`` values of a (sorted) collection for an error message."""
    values = [int(v) for v in values]
    return ", ".join(str(v) for v in values[:limit]) + (", ..." if len(values) > limit else "")


def check_pair_size(item: Mapping[str, str], dataset: str, label_word: str) -> tuple[int, int]:
    """``(W, H)`` of ``item["image"]``, checked equal to that of ``item["label"]`` (headers only)."""
    size, label_size = image_size(item["image"]), image_size(item["label"])
    if size != label_size:
        raise SynthCPInputError(
            f"{dataset} image {item['image']} is {size[0]}x{size[1]} but its {label_word} {item['label']} is "
            f"{label_size[0]}x{label_size[1]}."
        )
    return size
