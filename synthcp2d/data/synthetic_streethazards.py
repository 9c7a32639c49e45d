"""Synthetic street scenes written in the exact StreetHazards release layout (see ``streethazards.py``).

Train and validation images hold the 13 known classes only. Test images are painted the same way (a slightly
different "town" of the same world) and most of them, not all, contain 1-3 anomalous objects: blobs, stars or
random polygons standing on the road or sidewalk, coloured with saturated hues and geometric patterns
(checkers, stripes, dots, rings, rainbows) that no known class ever uses. Annotations follow the real files:
value = 0-based class index + 1 (anomaly = 14).
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from synthcp2d.data.generator_io import check_generator_args, save_png, staged_dataset
from synthcp2d.data.scene_painter import ELEMENTS, Appearance, SceneStyle, StreetScene
from synthcp2d.data.streethazards import (
    ANOMALY_INDEX,
    SPLIT_LAYOUT,
    STREETHAZARDS_CLASSES,
    STREETHAZARDS_FILE_OFFSET,
)

__all__ = [
    "ANOMALY_IMAGE_SHARE",
    "ELEMENT_TO_CLASS",
    "STREETHAZARDS_STYLE",
    "make_streethazards_dataset",
    "render_streethazards_case",
]

logger = logging.getLogger(__name__)

# painter element -> StreetHazards class name (CARLA's categories: sky is "unlabeled", all vehicles are "car")
ELEMENT_TO_CLASS: dict[str, str] = {
    "sky": "unlabeled",
    "ground": "other",
    "terrain": "vegetation",
    "sidewalk": "sidewalk",
    "road": "road",
    "road_line": "road line",
    "parking": "road",
    "building": "building",
    "wall": "wall",
    "fence": "fence",
    "guard_rail": "fence",
    "vegetation": "vegetation",
    "pole": "pole",
    "traffic_light": "traffic sign",
    "traffic_sign": "traffic sign",
    "person": "pedestrian",
    "rider": "pedestrian",
    "car": "car",
    "truck": "car",
    "bus": "car",
    "motorcycle": "car",
    "bicycle": "car",
    "static": "other",
    "anomaly": "anomaly",
}
_INDEX_LUT = np.array(
    [STREETHAZARDS_CLASSES.index(ELEMENT_TO_CLASS.get(e, "unlabeled")) for e in ELEMENTS], dtype=np.uint8
)
# A rendered simulator: cleaner than a camera (less noise and blur), no bonnet, no trams.
STREETHAZARDS_STYLE = SceneStyle(
    p_ego_vehicle=0.0,
    p_train=0.0,
    p_large_vehicle=0.3,
    p_two_wheeler=0.35,
    p_lane_markings=0.8,
    p_parking=0.15,
    p_fog=0.2,
    illumination=(0.7, 1.2),
    noise_std=(0.004, 0.025),
    blur_sigma=(0.0, 0.5),
)
ANOMALY_IMAGE_SHARE = 0.8  # share of test images with at least one anomaly
# Rarer classes forced into the first images of a split, two per image, so every class shows up in a few images.
_FORCE_CYCLE: tuple[str, ...] = ("wall", "truck", "fence", "bus", "traffic_light", "rider", "static", "traffic_sign")
_STREAM = 0x5A4  # keeps this generator's random streams apart from the Cityscapes one
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# hue bands (0-1) no known class uses at high saturation: purple-magenta, cyan, lime, orange
_ANOMALY_HUES = ((0.72, 0.95), (0.45, 0.55), (0.22, 0.35), (0.04, 0.1))


def _anomaly_color(rng: np.random.Generator) -> np.ndarray:
    lo, hi = _ANOMALY_HUES[int(rng.integers(len(_ANOMALY_HUES)))]
    return np.array(colorsys.hsv_to_rgb(rng.uniform(lo, hi), rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)))


def _add_anomaly(scene: StreetScene, rng: np.random.Generator) -> None:
    """Queue one anomalous object standing on the road or a sidewalk."""
    street = scene.street
    side = street.sides[int(rng.integers(2))]
    on_road = rng.random() < 0.6
    if on_road:
        X = float(rng.uniform(street.road_left + 0.6, street.road_right - 0.6))
    else:
        X = side.across(float(rng.uniform(0.3, max(0.4, side.sidewalk - 0.3))))
    Z = float(rng.uniform(scene.z_near + 2.0, min(35.0, street.z_end - 2.0)))
    width, height = float(rng.uniform(0.6, 3.5)), float(rng.uniform(0.5, 2.5))
    color = _anomaly_color(rng)
    color2 = _anomaly_color(rng) if rng.random() < 0.6 else np.array([0.97, 0.97, 0.97]) * rng.integers(0, 2)
    kind = str(rng.choice(["checker", "stripes", "dots", "rings", "rainbow"]))
    period = float(rng.uniform(1.5, 5.0)) * scene.px
    look = Appearance(
        color=color, low=0.04, mid=0.03, high=0.03, pattern=(kind, color2, period, float(rng.uniform(0, math.pi)))
    )
    shape = int(rng.integers(3))
    n_vertices = int(rng.integers(7, 15))
    radii = rng.uniform(0.45, 1.0, n_vertices) if shape == 1 else rng.uniform(0.75, 1.0, n_vertices)
    if shape == 1:
        radii[::2] *= rng.uniform(0.3, 0.6)  # a star
    angles = (
        np.sort(rng.uniform(0, 2 * math.pi, n_vertices))
        if shape == 2
        else np.linspace(0, 2 * math.pi, n_vertices + 1)[:-1]
    )
    blobs = [rng.uniform(-0.35, 0.35, 2) for _ in range(int(rng.integers(3, 6)))]
    blob_r = rng.uniform(0.25, 0.45, len(blobs))

    def draw(s: StreetScene) -> None:
        obj = s.new_object()
        part = s.new_part("anomaly", look, obj)
        box = s.billboard(X, Z, width, height)
        if shape == 0:  # blob: overlapping ellipses
            x0, yt, x1, yb = box
            for (du, dv), r in zip(blobs, blob_r):
                cx, cy = x0 + (0.5 + du) * (x1 - x0), yb + (0.5 + dv) * (yt - yb)
                s.ellipse(cx, cy, r * (x1 - x0), r * (yb - yt), part)
        else:
            pts = [(0.5 + 0.5 * r * math.cos(a), 0.5 + 0.5 * r * math.sin(a)) for r, a in zip(radii, angles)]
            s.polygon(s.uv(box, pts), part)
        s.shadow(s.ground_quad(X - 0.5 * width, X + 0.5 * width, Z - 0.3, Z + 0.8))

    scene.add_object(Z, draw)


def render_streethazards_case(
    seed: int, split: str, index: int, size: tuple[int, int] = (256, 128), anomalies: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic StreetHazards case; the same arguments always give the same arrays.

    Args:
        seed: data set seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: case number within the split.
        size: ``(W, H)``.
        anomalies: paint 1-3 anomalous objects (test only).

    Returns:
        ``image`` (H, W, 3) uint8 and ``index`` (H, W) uint8 0-based class indices (``ANOMALY_INDEX`` = anomaly);
        the annotation file stores ``index + 1``.
    """
    if anomalies and split != "test":
        raise ValueError("anomalies belong to the test split only")
    n = len(_FORCE_CYCLE)
    # the first images of a split each show two rarer classes; later ones keep the natural frequencies
    force = (_FORCE_CYCLE[(2 * index) % n], _FORCE_CYCLE[(2 * index + 1) % n]) if index < n else ()
    allowed = [e for e in ELEMENTS if e in ELEMENT_TO_CLASS and e != "anomaly"]
    for attempt in range(8):  # an anomaly hidden behind a nearer object: redraw the scene (deterministically)
        key = [int(seed), _STREAM, _SPLIT_CODE[split], int(index)] + ([attempt] if attempt else [])
        rng = np.random.default_rng(np.random.SeedSequence(key))
        scene = StreetScene(rng, size, STREETHAZARDS_STYLE, force=force, allowed=allowed)
        if anomalies:
            for _ in range(int(rng.choice([1, 1, 2, 3]))):
                _add_anomaly(scene, rng)
        painted = scene.render()
        index_map = _INDEX_LUT[painted.elements]
        if not anomalies or (index_map == ANOMALY_INDEX).any():
            break
    return painted.image, index_map


def _anomaly_flags(seed: int, count: int) -> list[bool]:
    """Which test images get anomalies: about ``ANOMALY_IMAGE_SHARE``, at least one with and one without."""
    flags = [
        bool(np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, 9, i])).random() < ANOMALY_IMAGE_SHARE)
        for i in range(count)
    ]
    if count >= 2 and all(flags):
        flags[-1] = False
    if not any(flags):
        flags[0] = True
    return flags


def make_streethazards_dataset(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    size: tuple[int, int] = (256, 128),
    progress: bool = True,
    *,
    val_cases: int | None = None,
    test_cases: int | None = None,
) -> Path:
    """Write a synthetic data set in the StreetHazards layout under ``out_dir/streethazards``; return that root.

    Writes ``train/images/training/t1-3/<n>.png``, ``train/images/validation/t4/<n>.png`` and
    ``test/images/test/{t5,t6}/<n>.png`` (test cases split between the two towns), the matching
    ``annotations/...`` PNGs (values 1-14) and the ``train/train.odgt``, ``train/validation.odgt`` and
    ``test/test.odgt`` indices. Each case has its own random stream: the same seed gives byte-identical files.
    An earlier generated root is replaced; any other existing non-empty folder is refused.

    Args:
        out_dir: parent folder; the data set root is ``out_dir/streethazards``.
        cases: number of training images.
        seed: non-negative integer.
        size: ``(W, H)`` in pixels (the real set is 1280x720).
        progress: show a tqdm progress bar.
        val_cases: validation images (default ``max(1, cases // 4)``).
        test_cases: test images (default ``max(2, cases // 2)``); about 80% hold anomalies, at least one does
            not when there are two or more.

    Raises:
        SynthCPInputError: bad counts, seed or size, or an existing foreign folder at the root.
    """
    width, height = check_generator_args(cases, seed, size, val_cases=val_cases, test_cases=test_cases)
    val_cases = max(1, cases // 4) if val_cases is None else int(val_cases)
    test_cases = max(2, cases // 2) if test_cases is None else int(test_cases)
    counts = {"train": cases, "val": val_cases, "test": test_cases}
    flags = _anomaly_flags(seed, test_cases)
    root = Path(out_dir).expanduser() / "streethazards"
    marker = {
        "generator": "synthcp2d.data.synthetic_streethazards.make_streethazards_dataset",
        "seed": int(seed),
        "cases": int(cases),
        "val_cases": val_cases,
        "test_cases": test_cases,
        "size": [width, height],
        "test_images_with_anomaly": int(sum(flags)),
    }
    total = sum(counts.values())
    with (
        staged_dataset(root, marker) as tmp,
        tqdm(total=total, desc="synthetic streethazards", disable=not progress, unit="image") as bar,
    ):
        for split, count in counts.items():
            top, sub, odgt_name, towns = SPLIT_LAYOUT[split]
            per_town = math.ceil(count / len(towns))
            index_entries = []
            for i in range(count):
                town = towns[min(i // per_town, len(towns) - 1)]
                image, index = render_streethazards_case(seed, split, i, (width, height), split == "test" and flags[i])
                rel_img, rel_ann = f"images/{sub}/{town}/{i}.png", f"annotations/{sub}/{town}/{i}.png"
                save_png(image, tmp / top / rel_img)
                save_png((index + STREETHAZARDS_FILE_OFFSET).astype(np.uint8), tmp / top / rel_ann)
                index_entries.append(
                    {
                        "dbName": "StreetHazards",
                        "width": width,
                        "height": height,
                        "fpath_img": rel_img,
                        "fpath_segm": rel_ann,
                    }
                )
                bar.update(1)
            (tmp / top / odgt_name).write_text(json.dumps(index_entries))
    logger.info(
        "wrote %d train, %d val and %d test synthetic StreetHazards images (%dx%d, %d with anomalies) to %s",
        cases,
        val_cases,
        test_cases,
        width,
        height,
        sum(flags),
        root,
    )
    return root
