"""2D data: Cityscapes and StreetHazards folders in their release layouts, and synthetic street scenes written in
those same layouts (so the studies run unchanged on the real data sets)."""

from __future__ import annotations

from synthcp2d.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_IGNORE_INDEX,
    CITYSCAPES_NUM_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_IDS,
    check_cityscapes_folder,
    label_ids_to_train_ids,
    load_cityscapes_datalist,
    load_label_train_ids,
    train_ids_to_color,
    train_ids_to_label_ids,
)
from synthcp2d.data.streethazards import (
    ANOMALY_INDEX,
    STREETHAZARDS_CLASSES,
    STREETHAZARDS_NUM_KNOWN_CLASSES,
    STREETHAZARDS_PALETTE,
    check_streethazards_folder,
    load_streethazards_datalist,
    load_streethazards_label,
    streethazards_to_color,
)
from synthcp2d.data.synthetic_cityscapes import make_cityscapes_dataset
from synthcp2d.data.synthetic_streethazards import make_streethazards_dataset

__all__ = [
    "ANOMALY_INDEX",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_IGNORE_INDEX",
    "CITYSCAPES_NUM_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_TRAIN_IDS",
    "STREETHAZARDS_CLASSES",
    "STREETHAZARDS_NUM_KNOWN_CLASSES",
    "STREETHAZARDS_PALETTE",
    "check_cityscapes_folder",
    "check_streethazards_folder",
    "label_ids_to_train_ids",
    "load_cityscapes_datalist",
    "load_label_train_ids",
    "load_streethazards_datalist",
    "load_streethazards_label",
    "make_cityscapes_dataset",
    "make_streethazards_dataset",
    "streethazards_to_color",
    "train_ids_to_color",
    "train_ids_to_label_ids",
]
