"""StreetHazards (the CAOS benchmark, hendrycks/anomaly-seg) in its release layout: classes, data lists, checks.

Layout, as ``streethazards_train.tar`` and ``streethazards_test.tar`` unpack side by side into one root::

    root/train/images/training/t1-3/<n>.png        root/train/annotations/training/t1-3/<n>.png
    root/train/images/validation/t4/<n>.png        root/train/annotations/validation/t4/<n>.png
    root/train/train.odgt, root/train/validation.odgt
    root/test/images/test/{t5,t6}/<n>.png          root/test/annotations/test/{t5,t6}/<n>.png
    root/test/test.odgt

An ``.odgt`` index is one JSON list of ``{"dbName", "width", "height", "fpath_img", "fpath_segm"}`` with paths
relative to its own folder (``train/`` or ``test/``); it is used when present, otherwise the folders are scanned.

Annotation convention. The PNG files are single-channel and store **1-based** values 1-14, in the order of
``STREETHAZARDS_CLASSES`` (1 = unlabeled ... 13 = traffic sign, 14 = anomaly); the benchmark's loader subtracts 1.
This code does the same: every array returned here holds the **0-based index** (file value - 1), so
``0 = unlabeled`` (an in-distribution class, never ignored), ``1..12`` the other known classes and
``ANOMALY_INDEX = 13`` the anomaly, which occurs in the test split only. Arrays are numpy ``(H, W)`` uint8.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthcp2d.data.folder_checks import check_pair_size, existing_folder, read_label_png, shown_values
from synthcp3d.errors import SynthCPInputError

__all__ = [
    "ANOMALY_INDEX",
    "STREETHAZARDS_CLASSES",
    "STREETHAZARDS_FILE_OFFSET",
    "STREETHAZARDS_NUM_KNOWN_CLASSES",
    "STREETHAZARDS_PALETTE",
    "STREETHAZARDS_SPLITS",
    "check_streethazards_folder",
    "load_streethazards_datalist",
    "load_streethazards_label",
    "streethazards_to_color",
]

STREETHAZARDS_CLASSES: tuple[str, ...] = (
    "unlabeled",
    "building",
    "fence",
    "other",
    "pedestrian",
    "pole",
    "road line",
    "road",
    "sidewalk",
    "vegetation",
    "car",
    "wall",
    "traffic sign",
    "anomaly",
)
"""Class names by 0-based index (= annotation file value - 1)."""
ANOMALY_INDEX = 13
STREETHAZARDS_NUM_KNOWN_CLASSES = 13  # indices 0-12, "unlabeled" included: what a segmenter is trained on
STREETHAZARDS_FILE_OFFSET = 1  # file value = index + 1
STREETHAZARDS_PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0),
        (70, 70, 70),
        (190, 153, 153),
        (250, 170, 160),
        (220, 20, 60),
        (153, 153, 153),
        (157, 234, 50),
        (128, 64, 128),
        (244, 35, 232),
        (107, 142, 35),
        (0, 0, 142),
        (102, 102, 156),
        (220, 220, 0),
        (60, 250, 240),
    ],
    dtype=np.uint8,
)
"""(14, 3) uint8 colours by 0-based index, those of the benchmark's ``create_dataset.py``."""

STREETHAZARDS_SPLITS: tuple[str, ...] = ("train", "val", "test")
# split -> (top folder, sub folder under images/ and annotations/, odgt file name, towns in the release)
SPLIT_LAYOUT: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "train": ("train", "training", "train.odgt", ("t1-3",)),
    "val": ("train", "validation", "validation.odgt", ("t4",)),
    "test": ("test", "test", "test.odgt", ("t5", "t6")),
}


def streethazards_to_color(index: np.ndarray) -> np.ndarray:
    """Colour a 0-based index map (H, W) -> (H, W, 3) uint8."""
    return STREETHAZARDS_PALETTE[np.clip(np.asarray(index).astype(np.intp), 0, ANOMALY_INDEX)]


def load_streethazards_label(path: str | os.PathLike, allow_anomaly: bool = True) -> np.ndarray:
    """Read an annotation PNG and return 0-based class indices, (H, W) uint8 in 0-13.

    Args:
        path: annotation file (values 1-14).
        allow_anomaly: if False, an anomaly pixel is an error (train and validation hold none).

    Raises:
        SynthCPInputError: missing/unreadable file, more than one channel, values outside 1-14, or an unexpected
            anomaly.
    """
    low, high = STREETHAZARDS_FILE_OFFSET, ANOMALY_INDEX + STREETHAZARDS_FILE_OFFSET
    arr = read_label_png(path, "StreetHazards annotation", f"a single-channel image of class values {low}-{high}")
    bad = np.unique(arr[(arr < low) | (arr > high)])
    if bad.size:
        raise SynthCPInputError(
            f"StreetHazards annotation {path} holds values {shown_values(bad)} outside the file convention "
            f"{low}-{high} (1 = unlabeled ... 14 = anomaly)."
        )
    index = (arr - STREETHAZARDS_FILE_OFFSET).astype(np.uint8)
    if not allow_anomaly and (index == ANOMALY_INDEX).any():
        raise SynthCPInputError(
            f"StreetHazards annotation {path} contains anomaly pixels (value {high}), which only the test split "
            f"may hold."
        )
    return index


def _resolve_root(root: str | os.PathLike) -> Path:
    root = existing_folder(root, "StreetHazards")
    if (root / "images").is_dir() or (root / "annotations").is_dir():
        raise SynthCPInputError(
            f"{root} looks like StreetHazards' train/ or test/ folder itself; pass its parent, the folder that "
            f"holds train/ and test/."
        )
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        nested = sorted(p.parent.parent for p in root.glob("*/train/images") if p.is_dir())
        hint = f"; found them in {nested[0]}, pass that folder instead" if nested else ""
        raise SynthCPInputError(
            f"StreetHazards folder {root} has neither train/ nor test/ (expected train/images/training/t1-3/ "
            f"and test/images/test/t5/){hint}."
        )
    return root


def _sort_key(item: dict[str, str]) -> tuple[str, int, str]:
    stem = Path(item["image"]).stem
    return (item["town"], int(stem) if stem.isdigit() else -1, stem)


def _read_odgt(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    try:
        data = json.loads(text)
        entries = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:  # JSON-lines, as semantic-segmentation-pytorch writes for ADE20K
        try:
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise SynthCPInputError(f"StreetHazards index {path} is not JSON ({err}).") from err
    for entry in entries:
        if not isinstance(entry, dict) or "fpath_img" not in entry or "fpath_segm" not in entry:
            raise SynthCPInputError(f"StreetHazards index {path} has an entry without fpath_img/fpath_segm: {entry}.")
    return entries


def load_streethazards_datalist(root: str | os.PathLike, split: str) -> list[dict[str, str]]:
    """List one split's image/annotation pairs, sorted by town then image number.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``[{"image": path, "label": annotation path, "town": "t1-3", "name": "t1-3/12"}, ...]``.

    Raises:
        SynthCPInputError: unknown split, wrong layout, missing folders, or an image without its annotation.
    """
    if split not in STREETHAZARDS_SPLITS:
        raise SynthCPInputError(
            f"Unknown StreetHazards split {split!r}; choose one of {', '.join(STREETHAZARDS_SPLITS)}."
        )
    root = _resolve_root(root)
    top, sub, odgt_name, _ = SPLIT_LAYOUT[split]
    base = root / top
    image_dir = base / "images" / sub
    if not image_dir.is_dir():
        raise SynthCPInputError(f"StreetHazards folder {root} has no {top}/images/{sub}/ folder for split {split!r}.")
    odgt = base / odgt_name
    items: list[dict[str, str]] = []
    if odgt.is_file():
        for entry in _read_odgt(odgt):
            image, label = base / entry["fpath_img"], base / entry["fpath_segm"]
            if not image.is_file():
                raise SynthCPInputError(f"StreetHazards index {odgt} lists {image}, which does not exist.")
            if not label.is_file():
                raise SynthCPInputError(f"StreetHazards image {image} has no annotation: expected {label}.")
            items.append({"image": str(image), "label": str(label), "town": image.parent.name})
    else:
        for town in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image in town.glob("*.png"):
                label = base / "annotations" / sub / town.name / image.name
                if not label.is_file():
                    raise SynthCPInputError(f"StreetHazards image {image} has no annotation: expected {label}.")
                items.append({"image": str(image), "label": str(label), "town": town.name})
    if not items:
        raise SynthCPInputError(f"No StreetHazards images under {image_dir}/<town>/ for split {split!r}.")
    for item in items:
        item["name"] = f"{item['town']}/{Path(item['image']).stem}"
    return sorted(items, key=_sort_key)


def check_streethazards_folder(
    root: str | os.PathLike, splits: Sequence[str] | None = None, deep: bool = True
) -> dict[str, Any]:
    """Check a StreetHazards folder and summarise it.

    Every image must have an annotation of the same size; with ``deep`` every annotation is read: values must
    follow the file convention (1-14) and train/val must hold no anomaly.

    Args:
        root: the folder holding ``train/`` and ``test/``.
        splits: splits to check (default: those whose folders exist).
        deep: read every annotation; otherwise headers only.

    Returns:
        JSON-ready dict: ``dataset``, ``root``, ``splits`` ({split: {images, towns}}), ``image_sizes``, and with
        ``deep`` also ``classes_present`` (known classes over train/val), ``test_images_with_anomaly`` and
        ``test_anomaly_fraction`` (share of test pixels).

    Raises:
        SynthCPInputError: with a one-sentence message for the first problem found.
    """
    root = _resolve_root(root)
    if splits is None:
        splits = [
            s for s in STREETHAZARDS_SPLITS if (root / SPLIT_LAYOUT[s][0] / "images" / SPLIT_LAYOUT[s][1]).is_dir()
        ]
        if not splits:
            raise SynthCPInputError(
                f"StreetHazards folder {root} has none of train/images/training/, train/images/validation/, "
                f"test/images/test/."
            )
    summary: dict[str, Any] = {"dataset": "streethazards", "root": str(root), "splits": {}}
    sizes: set[tuple[int, int]] = set()
    known = np.zeros(ANOMALY_INDEX + 1, dtype=np.int64)
    anomalous_images, anomaly_pixels, test_pixels = 0, 0, 0
    for split in splits:
        items = load_streethazards_datalist(root, split)
        for item in items:
            sizes.add(check_pair_size(item, "StreetHazards", "annotation"))
            if deep:
                index = load_streethazards_label(item["label"], allow_anomaly=split == "test")
                if split == "test":
                    n = int((index == ANOMALY_INDEX).sum())
                    anomalous_images += n > 0
                    anomaly_pixels += n
                    test_pixels += index.size
                else:
                    known += np.bincount(index.ravel(), minlength=ANOMALY_INDEX + 1)
        summary["splits"][split] = {"images": len(items), "towns": sorted({i["town"] for i in items})}
    summary["image_sizes"] = sorted([list(s) for s in sizes])
    if deep:
        summary["classes_present"] = [c for i, c in enumerate(STREETHAZARDS_CLASSES[:ANOMALY_INDEX]) if known[i] > 0]
        if "test" in splits:
            summary["test_images_with_anomaly"] = anomalous_images
            summary["test_anomaly_fraction"] = anomaly_pixels / test_pixels if test_pixels else 0.0
    return summary
