"""Cityscapes in its release layout: label tables, data lists, and a folder check with one-line errors.

Layout (as the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpack)::

    root/leftImg8bit/{train,val,test}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    root/gtFine/{train,val,test}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
                                        ..._gtFine_color.png, ..._gtFine_instanceIds.png, ..._gtFine_polygons.json

Label files hold Cityscapes *labelIds* (0-33); training uses the 19 *trainIds* (``CITYSCAPES_TRAIN_IDS``), every
other labelId becoming 255 (ignore). Arrays returned here are numpy ``(H, W)`` (row-major, as Pillow reads them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthcp2d.data.folder_checks import check_pair_size, existing_folder, read_label_png, shown_values
from synthcp3d.errors import SynthCPInputError

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_IGNORE_INDEX",
    "CITYSCAPES_LABEL_NAMES",
    "CITYSCAPES_LABEL_COLORS",
    "CITYSCAPES_NUM_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_SPLITS",
    "CITYSCAPES_TRAIN_IDS",
    "check_cityscapes_folder",
    "label_ids_to_train_ids",
    "load_cityscapes_datalist",
    "load_label_train_ids",
    "read_label_ids",
    "train_ids_to_color",
    "train_ids_to_label_ids",
]

CITYSCAPES_SPLITS: tuple[str, ...] = ("train", "val", "test")
CITYSCAPES_IGNORE_INDEX = 255
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
COLOR_SUFFIX = "_gtFine_color.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"

# labelId -> (name, trainId, colour), from the official cityscapesScripts ``labels.py`` (license plate, id -1,
# never appears in labelIds images).
_LABELS: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)),
    (3, "out of roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)
MAX_LABEL_ID = 33
# Classes whose pixels carry instance numbers in *_gtFine_instanceIds.png (labelId * 1000 + index).
INSTANCE_LABEL_IDS: frozenset[int] = frozenset({24, 25, 26, 27, 28, 29, 30, 31, 32, 33})

CITYSCAPES_TRAIN_IDS: dict[int, int] = {label_id: train_id for label_id, _, train_id, _ in _LABELS}
"""Official labelId -> trainId table: 19 evaluated classes 0-18, everything else 255 (ignore)."""
CITYSCAPES_LABEL_NAMES: dict[int, str] = {label_id: name for label_id, name, _, _ in _LABELS}
CITYSCAPES_LABEL_COLORS: dict[int, tuple[int, int, int]] = {label_id: color for label_id, _, _, color in _LABELS}
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    name for _, name, train_id, _ in sorted(_LABELS, key=lambda t: t[2]) if train_id != 255
)
"""The 19 trainId class names, index = trainId."""
CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASSES)
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [color for _, _, train_id, color in sorted(_LABELS, key=lambda t: t[2]) if train_id != 255], dtype=np.uint8
)
"""(19, 3) uint8 colours of the trainIds (the official ones)."""

_TRAIN_ID_LUT = np.full(256, CITYSCAPES_IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in CITYSCAPES_TRAIN_IDS.items():
    _TRAIN_ID_LUT[_label_id] = _train_id
# trainId -> the canonical labelId (255 -> 0 "unlabeled")
_LABEL_ID_LUT = np.zeros(256, dtype=np.uint8)
for _label_id, _train_id in CITYSCAPES_TRAIN_IDS.items():
    if _train_id != CITYSCAPES_IGNORE_INDEX:
        _LABEL_ID_LUT[_train_id] = _label_id
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds (any integer array, values 0-33) to trainIds (uint8, 0-18 or 255), same shape."""
    return _TRAIN_ID_LUT[np.asarray(label_ids).astype(np.intp, copy=False)]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds (0-18, 255 = ignore) back to labelIds; ignore becomes 0 ("unlabeled"). Same shape, uint8."""
    return _LABEL_ID_LUT[np.asarray(train_ids).astype(np.intp, copy=False)]


def train_ids_to_color(train_ids: np.ndarray) -> np.ndarray:
    """Colour a trainId map (H, W) with the official palette -> (H, W, 3) uint8; ignore is black."""
    return _COLOR_LUT[np.asarray(train_ids).astype(np.intp, copy=False)]


def read_label_ids(path: str | os.PathLike) -> np.ndarray:
    """Read a ``*_gtFine_labelIds.png`` as an (H, W) uint8 array of labelIds, checking it is one.

    Raises:
        SynthCPInputError: the file is missing or unreadable, is not single-channel, or holds values above 33.
    """
    arr = read_label_png(
        path,
        "Cityscapes label",
        f"a single-channel *{LABEL_SUFFIX} (the *{COLOR_SUFFIX} files are for viewing only)",
    )
    bad = np.unique(arr[arr > MAX_LABEL_ID]) if arr.max(initial=0) > MAX_LABEL_ID else ()
    if len(bad):
        raise SynthCPInputError(
            f"Cityscapes label {path} holds values {shown_values(bad)} that are not Cityscapes labelIds "
            f"(0-{MAX_LABEL_ID}); is it a trainId or instanceIds image?"
        )
    return arr.astype(np.uint8, copy=False)


def load_label_train_ids(path: str | os.PathLike) -> np.ndarray:
    """Read a ``*_gtFine_labelIds.png`` and return its trainIds, (H, W) uint8 with 0-18 and 255 (ignore)."""
    return label_ids_to_train_ids(read_label_ids(path))


def _resolve_root(root: str | os.PathLike) -> Path:
    """Check that ``root`` is the folder holding ``leftImg8bit/`` and ``gtFine/``; explain common mistakes."""
    root = existing_folder(root, "Cityscapes")
    if root.name in ("leftImg8bit", "gtFine") or (
        not (root / "leftImg8bit").is_dir()
        and any(
            next(root.glob(f"{s}/*/*_{kind}*.png"), None)
            for s in CITYSCAPES_SPLITS
            for kind in ("leftImg8bit", "gtFine")
        )
    ):
        raise SynthCPInputError(
            f"{root} looks like Cityscapes' leftImg8bit/ or gtFine/ folder itself; pass its parent, the folder "
            f"that holds both leftImg8bit/ and gtFine/."
        )
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub).is_dir():
            nested = sorted(p.parent for p in root.glob(f"*/{sub}") if p.is_dir())
            hint = f"; found one in {nested[0]}, pass that folder instead" if nested else ""
            raise SynthCPInputError(f"Cityscapes folder {root} has no {sub}/ folder{hint}.")
    return root


def load_cityscapes_datalist(root: str | os.PathLike, split: str) -> list[dict[str, str]]:
    """List one split's image/label pairs, sorted by city then file name.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``[{"image": path, "label": labelIds path, "city": city, "name": "{city}_{seq}_{frame}"}, ...]``.

    Raises:
        SynthCPInputError: unknown split, wrong layout, a split without images, or an image without its label.
    """
    if split not in CITYSCAPES_SPLITS:
        raise SynthCPInputError(f"Unknown Cityscapes split {split!r}; choose one of {', '.join(CITYSCAPES_SPLITS)}.")
    root = _resolve_root(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise SynthCPInputError(f"Cityscapes folder {root} has no leftImg8bit/{split}/ folder.")
    items: list[dict[str, str]] = []
    for city_dir in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for image in sorted(city_dir.glob(f"*{IMAGE_SUFFIX}")):
            name = image.name[: -len(IMAGE_SUFFIX)]
            label = root / "gtFine" / split / city_dir.name / f"{name}{LABEL_SUFFIX}"
            if not label.is_file():
                raise SynthCPInputError(f"Cityscapes image {image} has no label: expected {label}.")
            items.append({"image": str(image), "label": str(label), "city": city_dir.name, "name": name})
    if not items:
        loose = sorted(image_dir.glob(f"*{IMAGE_SUFFIX}"))
        hint = " (images must sit in one folder per city)" if loose else ""
        raise SynthCPInputError(f"No *{IMAGE_SUFFIX} images under {image_dir}/<city>/{hint}.")
    return items


def check_cityscapes_folder(
    root: str | os.PathLike, splits: Sequence[str] | None = None, deep: bool = True
) -> dict[str, Any]:
    """Check a Cityscapes folder and summarise it.

    Every image must have its labelIds file of the same size; with ``deep`` every label is read and its values
    checked (slow on the full data set: 5000 labels). ``train`` or ``val`` must be present; ``test`` is optional
    (its official labels are placeholders).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        splits: splits to check (default: those present).
        deep: read every label (values, classes present); otherwise headers only.

    Returns:
        JSON-ready dict: ``dataset``, ``root``, ``splits`` ({split: {images, cities}}), ``image_sizes`` ([W, H]
        pairs), and with ``deep`` also ``classes_present`` and ``classes_missing`` (trainId names over train and
        val) and ``ignore_fraction``.

    Raises:
        SynthCPInputError: with a one-sentence message for the first problem found.
    """
    root = _resolve_root(root)
    if splits is None:
        splits = [s for s in CITYSCAPES_SPLITS if (root / "leftImg8bit" / s).is_dir()]
        if not {"train", "val"} & set(splits):
            raise SynthCPInputError(f"Cityscapes folder {root} has neither leftImg8bit/train/ nor leftImg8bit/val/.")
    summary: dict[str, Any] = {"dataset": "cityscapes", "root": str(root), "splits": {}}
    sizes: set[tuple[int, int]] = set()
    counts = np.zeros(256, dtype=np.int64)
    for split in splits:
        items = load_cityscapes_datalist(root, split)
        for item in items:
            sizes.add(check_pair_size(item, "Cityscapes", "label"))
            if deep:
                train_ids = load_label_train_ids(item["label"])
                if split != "test":
                    counts += np.bincount(train_ids.ravel(), minlength=256)
        summary["splits"][split] = {"images": len(items), "cities": sorted({i["city"] for i in items})}
    summary["image_sizes"] = sorted([list(s) for s in sizes])
    if deep:
        total = int(counts.sum())
        summary["classes_present"] = [c for i, c in enumerate(CITYSCAPES_CLASSES) if counts[i] > 0]
        summary["classes_missing"] = [c for i, c in enumerate(CITYSCAPES_CLASSES) if counts[i] == 0]
        summary["ignore_fraction"] = float(counts[CITYSCAPES_IGNORE_INDEX] / total) if total else 0.0
    return summary
