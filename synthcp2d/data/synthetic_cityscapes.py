"""Synthetic street scenes written in the exact Cityscapes release layout (see ``cityscapes.py``).

Each image is a procedurally painted street (``scene_painter``) whose classes have their own texture and
colour statistics, varied per image (illumination, tint, shadows, haze, blur, noise), with confusable pairs
(terrain/vegetation, truck/bus/car, sidewalk/road in shadow, wall/building, person/rider) and thin objects
(poles, lights, signs, bicycles): a small segmenter trained on it makes realistic, image-dependent errors.
All 19 trainId classes appear across a split of 5 images or more; void labelIds (ego vehicle, static, ground,
parking, rail track, guard rail) appear too and map to 255.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from synthcp2d.data.cityscapes import (
    CITYSCAPES_LABEL_COLORS,
    COLOR_SUFFIX,
    IMAGE_SUFFIX,
    INSTANCE_LABEL_IDS,
    INSTANCE_SUFFIX,
    LABEL_SUFFIX,
)
from synthcp2d.data.generator_io import check_generator_args, save_png, staged_dataset
from synthcp2d.data.scene_painter import ELEMENTS, SceneStyle, StreetScene

__all__ = ["CITYSCAPES_STYLE", "ELEMENT_TO_LABEL_ID", "make_cityscapes_dataset", "render_cityscapes_case"]

logger = logging.getLogger(__name__)

ELEMENT_TO_LABEL_ID: dict[str, int] = {
    "sky": 23,
    "ground": 6,
    "terrain": 22,
    "sidewalk": 8,
    "road": 7,
    "road_line": 7,  # Cityscapes labels lane markings as road
    "parking": 9,
    "rail_track": 10,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "guard_rail": 14,
    "vegetation": 21,
    "pole": 17,
    "traffic_light": 19,
    "traffic_sign": 20,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
    "static": 4,
    "ego_vehicle": 1,
}
_LABEL_LUT = np.array([ELEMENT_TO_LABEL_ID.get(e, 0) for e in ELEMENTS], dtype=np.uint8)
_COLOR_LUT = np.zeros((256, 4), dtype=np.uint8)
for _label_id, _color in CITYSCAPES_LABEL_COLORS.items():
    _COLOR_LUT[_label_id] = (*_color, 255)  # the release's colour files are RGBA

CITYSCAPES_STYLE = SceneStyle()
TRAIN_CITIES: tuple[str, ...] = ("aachen", "bochum", "bremen")
VAL_CITIES: tuple[str, ...] = ("frankfurt", "lindau", "munster")
FRAME = 19  # the annotated frame of every Cityscapes snippet is its 20th, ``_000019``
# Rarer classes forced into successive images, two per image, so every class shows up in a few images.
_FORCE_CYCLE: tuple[str, ...] = (
    "train",
    "wall",
    "truck",
    "fence",
    "bus",
    "terrain",
    "motorcycle",
    "traffic_light",
    "bicycle",
    "rider",
)
_STREAM = 0xC17  # keeps this generator's random streams apart from the StreetHazards one
_SPLIT_CODE = {"train": 0, "val": 1}


def render_cityscapes_case(
    seed: int, split: str, index: int, size: tuple[int, int] = (256, 128)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic Cityscapes case; the same arguments always give the same arrays.

    Args:
        seed: data set seed.
        split: ``"train"`` or ``"val"``.
        index: case number within the split.
        size: ``(W, H)``.

    Returns:
        ``image`` (H, W, 3) uint8, ``label_ids`` (H, W) uint8 Cityscapes labelIds, ``instance_ids`` (H, W)
        uint16 as in ``*_gtFine_instanceIds.png`` (labelId * 1000 + k for instance classes, else the labelId).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, _SPLIT_CODE[split], int(index)]))
    n = len(_FORCE_CYCLE)
    # the first images of a split each show two rarer classes; later ones keep the natural frequencies
    force = (_FORCE_CYCLE[(2 * index) % n], _FORCE_CYCLE[(2 * index + 1) % n]) if index < n else ()
    allowed = [e for e in ELEMENTS if e in ELEMENT_TO_LABEL_ID]
    painted = StreetScene(rng, size, CITYSCAPES_STYLE, force=force, allowed=allowed).render()
    label_ids = _LABEL_LUT[painted.elements]
    instance_ids = label_ids.astype(np.uint16)
    counters: dict[int, int] = {}
    for obj in np.unique(painted.objects):
        if obj == 0:
            continue
        mask = painted.objects == obj
        label = int(np.bincount(label_ids[mask]).argmax())
        if label in INSTANCE_LABEL_IDS:
            k = counters.get(label, 0)
            counters[label] = k + 1
            instance_ids[mask & (label_ids == label)] = label * 1000 + k
    return painted.image, label_ids, instance_ids


def make_cityscapes_dataset(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    size: tuple[int, int] = (256, 128),
    val_cases: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic data set in the Cityscapes layout under ``out_dir/cityscapes`` and return that root.

    Writes, per case, ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png`` and the
    ``gtFine`` ``_labelIds``, ``_color`` (RGBA) and ``_instanceIds`` (16-bit) PNGs (no ``_polygons.json``). Cases
    are spread round-robin over 3 cities per split (train: aachen, bochum, bremen; val: frankfurt, lindau,
    munster). Each case has its own random stream (seed, split, index): the same seed gives byte-identical files,
    and adding cases leaves the earlier ones unchanged. An earlier generated root is replaced; any other existing
    non-empty folder is refused.

    Args:
        out_dir: parent folder; the data set root is ``out_dir/cityscapes``.
        cases: number of training images.
        seed: non-negative integer.
        size: ``(W, H)`` in pixels (the real set is 2048x1024; the default keeps its 2:1 aspect).
        val_cases: number of validation images (default ``max(1, cases // 4)``).
        progress: show a tqdm progress bar.

    Raises:
        SynthCPInputError: bad counts, seed or size, or an existing foreign folder at the root.
    """
    width, height = check_generator_args(cases, seed, size, val_cases=val_cases)
    val_cases = max(1, cases // 4) if val_cases is None else int(val_cases)
    root = Path(out_dir).expanduser() / "cityscapes"
    plan = [("train", i, TRAIN_CITIES) for i in range(cases)] + [("val", i, VAL_CITIES) for i in range(val_cases)]
    marker = {
        "generator": "synthcp2d.data.synthetic_cityscapes.make_cityscapes_dataset",
        "seed": int(seed),
        "cases": int(cases),
        "val_cases": val_cases,
        "size": [width, height],
    }
    with staged_dataset(root, marker) as tmp:
        for split, index, cities in tqdm(plan, desc="synthetic cityscapes", disable=not progress, unit="image"):
            n_cities = min(len(cities), cases if split == "train" else val_cases)
            city = cities[index % n_cities]
            name = f"{city}_{index // n_cities:06d}_{FRAME:06d}"
            image, label_ids, instance_ids = render_cityscapes_case(seed, split, index, (width, height))
            gt = tmp / "gtFine" / split / city
            save_png(image, tmp / "leftImg8bit" / split / city / f"{name}{IMAGE_SUFFIX}")
            save_png(label_ids, gt / f"{name}{LABEL_SUFFIX}")
            save_png(_COLOR_LUT[label_ids], gt / f"{name}{COLOR_SUFFIX}")
            save_png(instance_ids, gt / f"{name}{INSTANCE_SUFFIX}")
    logger.info(
        "wrote %d train and %d val synthetic Cityscapes images (%dx%d) to %s", cases, val_cases, width, height, root
    )
    return root
