"""Procedural street scenes for the synthetic Cityscapes and StreetHazards data sets.

A pinhole camera looks down a street; the layout (road, sidewalks, facades, trees, poles, vehicles, people, ...)
is placed in metres and painted back to front into an instance canvas, then rendered with per-class colour and
texture statistics that change from image to image (illumination, tint, shadows, fog, blur, noise). The painter
speaks of scene *elements* (``ELEMENTS``); each generator maps elements onto its data set's label values and
picks a ``SceneStyle``. Nothing here is tied to one data set, and the same ``rng`` gives the same scene.

Why hand-written: neither MONAI nor scipy draws street scenes; Pillow's ``ImageDraw`` rasterises the polygons
(deterministically) and numpy/scipy do the texturing.

The module also holds what both generators need to write a data set: argument checks, deterministic PNG writes
and ``staged_dataset`` (build in a temporary folder, move into place when complete).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json

__all__ = [
    "ELEMENTS",
    "ELEMENT_INDEX",
    "Appearance",
    "Camera",
    "PaintedScene",
    "SceneStyle",
    "StreetScene",
    "SYNTHETIC_MARKER",
    "check_generator_args",
    "save_png",
    "staged_dataset",
]

# The painter's vocabulary. Generators map each element to a label value (several elements may share one).
ELEMENTS: tuple[str, ...] = (
    "sky",
    "ground",
    "terrain",
    "sidewalk",
    "road",
    "road_line",
    "parking",
    "rail_track",
    "building",
    "wall",
    "fence",
    "guard_rail",
    "vegetation",
    "pole",
    "traffic_light",
    "traffic_sign",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "static",
    "ego_vehicle",
    "anomaly",
)
ELEMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(ELEMENTS)}

# Texture fields an appearance mixes (weights in ``Appearance``), in this order.
_FIELDS = ("low", "mid", "high", "windows", "stripes", "tiles", "vgrad")

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # a billboard's screen box (x0, y_top, x1, y_bottom)


@dataclass(frozen=True)
class SceneStyle:
    """Probabilities and ranges that distinguish one synthetic data set's look from another's.

    Args:
        p_ego_vehicle: share of images showing the recording car's bonnet at the bottom.
        p_train: share of images with a tram crossing the street.
        p_large_vehicle: share of images with a truck or bus.
        p_two_wheeler: share of images with a rider (bicycle or motorcycle).
        p_lane_markings: share of images with painted lane markings.
        p_parking: share of images with a parking strip beside the road.
        p_fog: share of images with haze towards the horizon.
        p_sunny: share of images with hard shadows (otherwise overcast).
        illumination: range of the global gain.
        noise_std: range of the per-image Gaussian pixel noise (fraction of full scale).
        blur_sigma: range of the per-image Gaussian blur, in pixels at width 256.
        terrain_share: chance that the open ground beyond the facades is terrain (else "ground").
    """

    p_ego_vehicle: float = 0.5
    p_train: float = 0.06
    p_large_vehicle: float = 0.35
    p_two_wheeler: float = 0.5
    p_lane_markings: float = 0.6
    p_parking: float = 0.25
    p_fog: float = 0.3
    p_sunny: float = 0.6
    illumination: tuple[float, float] = (0.55, 1.3)
    noise_std: tuple[float, float] = (0.008, 0.045)
    blur_sigma: tuple[float, float] = (0.0, 0.9)
    terrain_share: float = 0.6


@dataclass
class Appearance:
    """How one painted part looks: a base colour modulated by texture fields.

    Args:
        color: base RGB in [0, 1], shape (3,).
        low, mid, high: amplitudes of smooth noise at large, medium and pixel scale.
        windows: amplitude of the facade-window grid (dark windows).
        stripes: amplitude of vertical bars (fences, rails).
        tiles: amplitude of paving joints.
        vgrad: amplitude of a vertical gradient (sky brightening towards the horizon).
        pattern: optional two-colour geometric pattern ``(kind, color2, period_px, angle_rad)`` with kind in
            ``"checker" | "stripes" | "dots" | "rings" | "rainbow"``; no street element uses one (anomalies do).
    """

    color: np.ndarray
    low: float = 0.05
    mid: float = 0.04
    high: float = 0.03
    windows: float = 0.0
    stripes: float = 0.0
    tiles: float = 0.0
    vgrad: float = 0.0
    pattern: tuple[str, np.ndarray, float, float] | None = None

    def weights(self) -> list[float]:
        return [getattr(self, name) for name in _FIELDS]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at ``cam_height`` metres, looking along +Z; X to the right, Y up, all in metres."""

    width: int
    height: int
    focal: float
    cx: float
    horizon: float
    cam_height: float

    def x(self, X: float, Z: float) -> float:
        return self.cx + self.focal * X / Z

    def y(self, Y: float, Z: float) -> float:
        return self.horizon + self.focal * (self.cam_height - Y) / Z

    @property
    def z_bottom(self) -> float:
        """Depth of the ground seen at the image's bottom row."""
        return self.focal * self.cam_height / (self.height - self.horizon)

    def scale(self, Z: float) -> float:
        """Pixels per metre at depth ``Z``."""
        return self.focal / Z


@dataclass
class PaintedScene:
    """A rendered scene.

    Attributes:
        image: uint8 RGB, shape (H, W, 3).
        elements: uint8 element index (into ``ELEMENTS``) per pixel, shape (H, W).
        objects: int32 object id per pixel (0 = stuff, no object), shape (H, W); the parts of one car share one id.
    """

    image: np.ndarray
    elements: np.ndarray
    objects: np.ndarray


@dataclass
class _Side:
    sign: int  # -1 left, +1 right
    edge: float  # X of the curb
    sidewalk: float  # sidewalk width (m)
    verge: float  # terrain strip width behind the sidewalk (m)
    front: float = field(init=False)  # X of the property line

    def __post_init__(self) -> None:
        self.front = self.edge + self.sign * (self.sidewalk + self.verge)

    def across(self, distance: float) -> float:
        """X at ``distance`` metres from the curb, away from the road (negative goes into the road)."""
        return self.edge + self.sign * distance


# Colour palettes (sRGB in [0, 1]). Instance colours overlap across classes on purpose (grey car, grey wall,
# grey pole): the class must come from shape and context, not colour alone.
_WHITE, _SILVER, _BLACK, _GREY = (0.82, 0.82, 0.80), (0.60, 0.62, 0.64), (0.08, 0.08, 0.09), (0.36, 0.37, 0.39)
_PALETTES: dict[str, list[tuple[float, float, float]]] = {
    "building": [
        (0.62, 0.58, 0.52),
        (0.55, 0.55, 0.56),
        (0.55, 0.36, 0.30),
        (0.78, 0.76, 0.70),
        (0.45, 0.43, 0.40),
        (0.70, 0.62, 0.48),
        (0.66, 0.52, 0.44),
    ],
    "wall": [(0.60, 0.58, 0.52), (0.50, 0.50, 0.50), (0.62, 0.52, 0.44), (0.70, 0.68, 0.62)],
    "fence": [(0.50, 0.46, 0.40), (0.35, 0.36, 0.36), (0.55, 0.55, 0.52), (0.22, 0.30, 0.24)],
    "car": [
        _WHITE,
        _SILVER,
        _BLACK,
        _GREY,
        (0.55, 0.08, 0.07),
        (0.12, 0.20, 0.45),
        (0.12, 0.25, 0.18),
        (0.60, 0.55, 0.45),
    ],
    "truck": [_WHITE, _SILVER, (0.70, 0.20, 0.10), (0.20, 0.30, 0.55), (0.85, 0.70, 0.10), _GREY],
    "bus": [(0.85, 0.75, 0.15), _WHITE, (0.70, 0.10, 0.10), (0.15, 0.35, 0.60), (0.10, 0.45, 0.30)],
    "train": [_WHITE, (0.75, 0.15, 0.10), (0.90, 0.80, 0.20), (0.20, 0.35, 0.60)],
    "motorcycle": [_BLACK, (0.60, 0.10, 0.10), (0.20, 0.20, 0.50), _SILVER],
    "bicycle": [_BLACK, (0.50, 0.50, 0.50), (0.60, 0.10, 0.10), (0.15, 0.30, 0.60)],
    "clothes": [
        (0.10, 0.10, 0.12),
        (0.15, 0.18, 0.30),
        (0.45, 0.45, 0.45),
        (0.60, 0.52, 0.40),
        (0.60, 0.12, 0.12),
        (0.80, 0.80, 0.80),
        (0.25, 0.32, 0.45),
        (0.30, 0.40, 0.25),
    ],
    "skin": [(0.80, 0.62, 0.50), (0.62, 0.45, 0.35), (0.42, 0.30, 0.22)],
    "traffic_sign": [(0.75, 0.10, 0.10), (0.10, 0.25, 0.65), (0.90, 0.75, 0.10), (0.85, 0.85, 0.85)],
    "pole": [(0.40, 0.40, 0.42), (0.20, 0.28, 0.22), (0.55, 0.56, 0.58)],
    "static": [(0.30, 0.30, 0.32), (0.45, 0.32, 0.20), (0.20, 0.35, 0.20), (0.60, 0.50, 0.30)],
}
# Base looks of stuff: (colour, low, mid, high, windows, stripes, tiles, vgrad)
_STUFF: dict[str, tuple[tuple[float, float, float], float, float, float, float, float, float, float]] = {
    "ground": ((0.45, 0.42, 0.38), 0.10, 0.06, 0.05, 0.0, 0.0, 0.0, 0.0),
    "terrain": ((0.42, 0.46, 0.25), 0.14, 0.12, 0.10, 0.0, 0.0, 0.0, 0.0),
    "sidewalk": ((0.56, 0.54, 0.55), 0.08, 0.04, 0.05, 0.0, 0.0, 0.12, 0.0),
    "road": ((0.33, 0.33, 0.35), 0.09, 0.05, 0.07, 0.0, 0.0, 0.0, 0.0),
    "road_line": ((0.85, 0.85, 0.80), 0.05, 0.03, 0.05, 0.0, 0.0, 0.0, 0.0),
    "parking": ((0.42, 0.40, 0.43), 0.08, 0.04, 0.05, 0.0, 0.0, 0.06, 0.0),
    "rail_track": ((0.38, 0.33, 0.30), 0.06, 0.04, 0.06, 0.0, 0.35, 0.0, 0.0),
    "vegetation": ((0.22, 0.34, 0.14), 0.10, 0.16, 0.18, 0.0, 0.0, 0.0, 0.0),
    "guard_rail": ((0.62, 0.63, 0.64), 0.04, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0),
}
_SKIES = [(0.50, 0.66, 0.88), (0.78, 0.80, 0.83), (0.82, 0.70, 0.60), (0.62, 0.70, 0.80)]


class StreetScene:
    """One random street scene: build the layout on construction, add objects, then ``render()``.

    Args:
        rng: the only source of randomness (same state -> same scene).
        size: ``(W, H)`` in pixels.
        style: the data set's ``SceneStyle``.
        force: elements that must appear in this image (e.g. ``{"train", "wall"}``), used to make every class
            appear across a small data set.
        allowed: elements this data set may paint (others are never placed); ``None`` means all but "anomaly".

    Objects are billboards at a depth ``Z``; ``add_object(Z, draw)`` queues a callable ``draw(scene)`` that paints
    with ``new_part``/``polygon``/``ellipse``/``billboard``; objects are painted far to near at ``render()``.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        style: SceneStyle | None = None,
        force: Sequence[str] = (),
        allowed: Sequence[str] | None = None,
    ) -> None:
        self.rng = rng
        self.width, self.height = int(size[0]), int(size[1])
        self.style = style or SceneStyle()
        self.force = set(force)
        self.allowed = set(ELEMENTS) - {"anomaly"} if allowed is None else set(allowed)
        unknown = (self.force | self.allowed) - set(ELEMENTS)
        if unknown:
            raise ValueError(f"unknown scene elements {sorted(unknown)}; known: {ELEMENTS}")
        self.px = self.width / 256.0  # texture scale relative to the default width
        r = rng
        self.camera = Camera(
            width=self.width,
            height=self.height,
            focal=self.width * r.uniform(0.75, 1.05),
            cx=self.width * (0.5 + r.uniform(-0.06, 0.06)),
            horizon=self.height * r.uniform(0.36, 0.5),
            cam_height=r.uniform(1.2, 1.7),
        )
        self.z_near = 0.6 * self.camera.z_bottom
        self._canvas = Image.new("I", (self.width, self.height), 0)
        self._draw = ImageDraw.Draw(self._canvas)
        self._shadow = Image.new("L", (self.width, self.height), 0)
        self._shadow_draw = ImageDraw.Draw(self._shadow)
        self._looks: list[Appearance] = []
        self._part_element: list[int] = []
        self._part_object: list[int] = []
        self._n_objects = 0
        self._queue: list[tuple[float, int, Callable[[StreetScene], None]]] = []
        # per-image, per-class tint: the same class changes colour from image to image
        self._tint = {name: r.normal(1.0, 0.07, 3) * r.uniform(0.85, 1.15) for name in ELEMENTS}
        self.sunny = r.random() < self.style.p_sunny
        self.sun_side = int(r.choice([-1, 1]))
        self._layout()

    # ---------------------------------------------------------------- primitives
    def allows(self, element: str) -> bool:
        return element in self.allowed

    def wants(self, element: str, p: float) -> bool:
        """Whether to place ``element``: forced, or allowed and drawn with probability ``p``."""
        if element not in self.allowed:
            return False
        return element in self.force or self.rng.random() < p

    def look(self, element: str, color: Sequence[float] | None = None, jitter: float = 0.05, **kw: float) -> Appearance:
        """An appearance for ``element``: palette or stuff colour, this image's class tint, instance jitter."""
        r = self.rng
        stuff = _STUFF.get(element)
        if color is None:
            if stuff is not None:
                color = stuff[0]
            elif element in _PALETTES:
                pal = _PALETTES[element]
                color = pal[int(r.integers(len(pal)))]
            else:
                color = (0.5, 0.5, 0.5)
        base = np.asarray(color, np.float64) * self._tint.get(element, 1.0) * r.normal(1.0, jitter, 3)
        params = dict(zip(_FIELDS, stuff[1:])) if stuff is not None else {}
        params.update(kw)
        return Appearance(color=np.clip(base, 0.0, 1.0), **params)

    def new_object(self) -> int:
        """A new object id (for instance maps); parts painted with it form one object."""
        self._n_objects += 1
        return self._n_objects

    def new_part(self, element: str, look: Appearance, obj: int = 0) -> int:
        """Register a painted part and return its canvas id."""
        self._looks.append(look)
        self._part_element.append(ELEMENT_INDEX[element])
        self._part_object.append(obj)
        return len(self._looks)  # 0 is reserved for "nothing painted"

    def polygon(self, points: Sequence[Point], part: int) -> None:
        if len(points) >= 3:
            self._draw.polygon([(float(x), float(y)) for x, y in points], fill=part)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, part: int, width: int = 0) -> None:
        rx, ry = max(abs(rx), 0.5), max(abs(ry), 0.5)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if width > 0:
            self._draw.ellipse(box, outline=part, width=width)
        else:
            self._draw.ellipse(box, fill=part)

    def line(self, points: Sequence[Point], part: int, width_px: float) -> None:
        self._draw.line([(float(x), float(y)) for x, y in points], fill=part, width=max(1, int(round(width_px))))

    def shadow(self, points: Sequence[Point]) -> None:
        """Mark a polygon as shadowed (darkened at render time)."""
        if len(points) >= 3:
            self._shadow_draw.polygon([(float(x), float(y)) for x, y in points], fill=255)

    def _depth_span(self, Z0: float, Z1: float) -> tuple[float, float]:
        """``(Z0, Z1)`` clipped to start no nearer than the near plane and to span a positive depth."""
        Z0 = max(Z0, self.z_near)
        return Z0, max(Z1, Z0 + 1e-3)

    def ground_quad(self, X0: float, X1: float, Z0: float, Z1: float) -> list[Point]:
        """A ground rectangle from X0 to X1 across and Z0 to Z1 in depth."""
        c = self.camera
        Z0, Z1 = self._depth_span(Z0, Z1)
        return [
            (c.x(X0, Z0), c.y(0, Z0)),
            (c.x(X1, Z0), c.y(0, Z0)),
            (c.x(X1, Z1), c.y(0, Z1)),
            (c.x(X0, Z1), c.y(0, Z1)),
        ]

    def side_quad(self, X: float, Z0: float, Z1: float, Y0: float, Y1: float) -> list[Point]:
        """A vertical plane along the street (constant X)."""
        c = self.camera
        Z0, Z1 = self._depth_span(Z0, Z1)
        return [
            (c.x(X, Z0), c.y(Y0, Z0)),
            (c.x(X, Z1), c.y(Y0, Z1)),
            (c.x(X, Z1), c.y(Y1, Z1)),
            (c.x(X, Z0), c.y(Y1, Z0)),
        ]

    def front_quad(self, X0: float, X1: float, Z: float, Y0: float, Y1: float) -> list[Point]:
        """A vertical plane facing the camera (constant Z) from X0 to X1 and from height Y0 to Y1."""
        c = self.camera
        return [(c.x(X0, Z), c.y(Y0, Z)), (c.x(X1, Z), c.y(Y0, Z)), (c.x(X1, Z), c.y(Y1, Z)), (c.x(X0, Z), c.y(Y1, Z))]

    def billboard(self, X: float, Z: float, w: float, h: float, Y0: float = 0.0) -> Box:
        """Screen box ``(x0, y_top, x1, y_bottom)`` of a camera-facing rectangle centred at X, from Y0 to Y0+h."""
        c = self.camera
        return c.x(X - w / 2, Z), c.y(Y0 + h, Z), c.x(X + w / 2, Z), c.y(Y0, Z)

    @staticmethod
    def uv(box: Box, pts: Sequence[Point]) -> list[Point]:
        """Map points in a billboard's unit square (u right, v up) to the screen."""
        x0, yt, x1, yb = box
        return [(x0 + u * (x1 - x0), yb + v * (yt - yb)) for u, v in pts]

    def rect(self, box: Box, u0: float, v0: float, u1: float, v1: float, part: int) -> None:
        """Paint the rectangle ``[u0, u1] x [v0, v1]`` of a billboard's unit square."""
        self.polygon(self.uv(box, [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]), part)

    def mirrored(self, box: Box) -> Box:
        """``box`` flipped left-right with probability 1/2 (an object seen from its other side)."""
        return (box[2], box[1], box[0], box[3]) if self.rng.random() < 0.5 else box

    def add_object(self, Z: float, draw: Callable[[StreetScene], None]) -> None:
        """Queue an object at depth ``Z`` (painted far to near by ``render``)."""
        self._queue.append((float(Z), len(self._queue), draw))

    # ---------------------------------------------------------------- layout
    def _layout(self) -> None:
        r, c = self.rng, self.camera
        W, H = self.width, self.height
        self.polygon([(0, 0), (W, 0), (W, H), (0, H)], self.new_part("sky", self._sky_look()))
        base = "terrain" if ("terrain" in self.force or r.random() < self.style.terrain_share) else "ground"
        if not self.allows(base):
            base = "terrain" if self.allows("terrain") else "sidewalk"
        self.polygon([(0, c.horizon), (W, c.horizon), (W, H), (0, H)], self.new_part(base, self.look(base)))

        self.road_left, self.road_right = -r.uniform(2.5, 7.0), r.uniform(2.5, 7.0)
        self.open_end = r.random() < 0.25
        self.z_end = 600.0 if self.open_end else r.uniform(45.0, 160.0)
        sides = []
        for sign, edge in ((-1, self.road_left), (1, self.road_right)):
            sidewalk = r.uniform(1.5, 4.5) if r.random() < 0.92 else 0.3
            verge = r.uniform(0.6, 3.5) if self.wants("terrain", 0.35) else 0.0
            sides.append(_Side(sign, edge, sidewalk, verge))
        self.sides = sides
        self._paint_ground()
        if not self.open_end:
            self._paint_backdrop()
        forced = [e for e in ("wall", "fence") if e in self.force and self.allows(e)]
        forced_side = int(r.integers(2))
        for i, side in enumerate(sides):
            self._paint_side(side, forced if i == forced_side else [])
        self._place_objects()

    def _sky_look(self) -> Appearance:
        r = self.rng
        sky = _SKIES[0] if self.sunny and r.random() < 0.7 else _SKIES[int(r.integers(1, len(_SKIES)))]
        return self.look("sky", sky, jitter=0.04, low=0.04, mid=0.01, high=0.01, vgrad=0.25)

    def _paint_ground(self) -> None:
        r, z_end = self.rng, self.z_end
        z_far = min(z_end, 120.0)
        for side in self.sides:
            walk = self.new_part("sidewalk", self.look("sidewalk", jitter=0.06))
            self.polygon(self.ground_quad(side.edge, side.across(side.sidewalk), 0, z_end), walk)
            if side.verge > 0:
                strip = self.new_part("terrain", self.look("terrain"))
                self.polygon(self.ground_quad(side.across(side.sidewalk), side.front, 0, z_end), strip)
        road = self.new_part("road", self.look("road", jitter=0.05))
        self.polygon(self.ground_quad(self.road_left, self.road_right, 0, z_end), road)
        if self.wants("parking", self.style.p_parking):
            side = self.sides[int(r.integers(2))]
            z0 = r.uniform(0, 15)
            lot = self.new_part("parking", self.look("parking"))
            self.polygon(self.ground_quad(side.edge, side.across(-2.3), z0, z0 + r.uniform(10, 40)), lot)
        if self.wants("road_line", self.style.p_lane_markings):
            paint = self.new_part("road_line", self.look("road_line", jitter=0.04))
            xc = 0.5 * (self.road_left + self.road_right) + r.uniform(-0.4, 0.4)
            z, period = r.uniform(0, 9), r.uniform(8, 12)
            while z < z_far:
                self.polygon(self.ground_quad(xc - 0.08, xc + 0.08, z, z + 3.0), paint)
                z += period
            if r.random() < 0.4:
                for side in self.sides:
                    x = side.across(-0.3)
                    self.polygon(self.ground_quad(x - 0.06, x + 0.06, 0, z_far), paint)
            if r.random() < 0.2:  # zebra crossing
                zc = r.uniform(8, 25)
                x = self.road_left
                while x < self.road_right - 0.4:
                    self.polygon(self.ground_quad(x, x + 0.5, zc, zc + 3.0), paint)
                    x += 1.0
        if self.sunny:  # building shadows fall across the sidewalk and into the road
            side = self.sides[0] if self.sun_side < 0 else self.sides[1]
            z = 0.0
            while z < z_far:
                length = r.uniform(6, 30)
                if r.random() < 0.7:
                    reach = r.uniform(1.0, 9.0)
                    self.shadow(self.ground_quad(side.front, side.front - side.sign * reach, z, z + length))
                z += length

    def _paint_backdrop(self) -> None:
        r, z = self.rng, self.z_end
        x = -90.0
        if r.random() < 0.25:  # a row of trees closes the street
            part = self.new_part("vegetation", self.look("vegetation"))
            while x < 90:
                rad = r.uniform(2, 5)
                self._crown(x, z, r.uniform(2, 6), rad, part)
                x += rad * r.uniform(1.0, 1.8)
            return
        while x < 90.0:
            w = r.uniform(8, 25)
            if r.random() < 0.85:
                part = self.new_part("building", self.look("building", windows=r.uniform(0.3, 0.6)))
                self.polygon(self.front_quad(x, x + w, z, 0, r.uniform(6, 30)), part)
            x += w

    def _crown(self, X: float, Z: float, Y: float, radius: float, part: int) -> None:
        """A tree crown: a cluster of ellipses around (X, Y) at depth Z."""
        r, c = self.rng, self.camera
        for _ in range(int(r.integers(3, 7))):
            dx, dy = r.normal(0, 0.45 * radius, 2)
            rr = radius * r.uniform(0.5, 0.9)
            self.ellipse(c.x(X + dx, Z), c.y(Y + dy, Z), c.scale(Z) * rr, c.scale(Z) * rr * r.uniform(0.8, 1.1), part)

    def _paint_side(self, side: _Side, forced: list[str]) -> None:
        r = self.rng
        blocks: list[tuple[str, float, float]] = []
        z = 0.0
        while z < self.z_end and z < 250.0:  # beyond 250 m everything is sub-pixel
            length = r.uniform(8, 30)
            kind = str(r.choice(["building", "vegetation", "wall", "fence", "open"], p=[0.6, 0.14, 0.1, 0.08, 0.08]))
            if forced:  # the first blocks, long enough to reach where the side is in view
                kind = forced.pop(0)
                length = r.uniform(20, 40)
            elif not self.allows(kind) and kind != "open":
                kind = "building"
            blocks.append((kind, z, min(z + length, self.z_end)))
            z += length
        for kind, z0, z1 in reversed(blocks):  # far blocks first
            self._paint_block(side, kind, z0, z1)

    def _building(self, side: _Side, X: float, z0: float, z1: float, h: float) -> None:
        r = self.rng
        look = self.look("building", windows=r.uniform(0.25, 0.6), low=0.06, mid=0.04, high=0.03)
        part = self.new_part("building", look)
        self.polygon(self.side_quad(X, z0, z1, 0, h), part)
        if z0 > self.z_near:  # the end face towards the camera, in the same material, a bit darker
            face = Appearance(**{**look.__dict__, "color": look.color * r.uniform(0.65, 0.9)})
            self.polygon(self.front_quad(X, X + side.sign * 15.0, z0, 0, h), self.new_part("building", face))

    def _paint_block(self, side: _Side, kind: str, z0: float, z1: float) -> None:
        r = self.rng
        front = side.front
        if kind == "building":
            self._building(side, front + side.sign * r.uniform(0, 1.5), z0, z1, r.uniform(5, 25))
        elif kind in ("wall", "fence"):
            if r.random() < 0.6:
                self._building(side, front + side.sign * r.uniform(4, 10), z0, z1, r.uniform(6, 20))
            else:
                self._trees_along(side, front + side.sign * r.uniform(2, 6), z0, z1)
            if kind == "wall":
                part = self.new_part("wall", self.look("wall", jitter=0.06, low=0.08, mid=0.08, high=0.05))
                h = r.uniform(1.2, 3.2)
            else:
                part = self.new_part("fence", self.look("fence", stripes=r.uniform(0.25, 0.5), mid=0.05))
                h = r.uniform(1.0, 2.2)
            self.polygon(self.side_quad(front, z0, z1, 0, h), part)
        elif kind == "vegetation":
            self._trees_along(side, front + side.sign * r.uniform(0.5, 4), z0, z1)
            if r.random() < 0.5:
                hedge = self.new_part("vegetation", self.look("vegetation"))
                self.polygon(self.side_quad(front, z0, z1, 0, r.uniform(0.8, 2.5)), hedge)
        elif kind == "open" and r.random() < 0.5:
            self._trees_along(side, front + side.sign * r.uniform(3, 15), z0, z1)

    def _trees_along(self, side: _Side, X: float, z0: float, z1: float) -> None:
        z = z0 + self.rng.uniform(0, 6)
        while z < z1:
            self.add_object(z, lambda s, X=X, z=z: s._tree(X, z))
            z += self.rng.uniform(5, 12)

    # ---------------------------------------------------------------- objects
    def _place_objects(self) -> None:
        r, st = self.rng, self.style
        zmin, zmax = self.z_near + 1.0, min(self.z_end - 2.0, 90.0)

        def zr(lo: float = zmin, hi: float = zmax) -> float:
            return float(r.uniform(lo, max(lo + 1.0, hi)))

        for side in self.sides:  # street lamps, some carrying a sign
            z = r.uniform(0, 10)
            while z < min(self.z_end, 120.0):
                X = side.across(r.uniform(0.3, 0.7))
                sign = self.wants("traffic_sign", 0.35)
                self.add_object(z, lambda s, X=X, z=z, sign=sign: s._pole(X, z, with_sign=sign))
                z += r.uniform(12, 28)
            if side.verge > 0 or side.sidewalk > 2.5:
                if r.random() < 0.5:
                    self._trees_along(
                        side, side.across(side.sidewalk + side.verge * 0.5 - 0.6), 0.0, min(self.z_end, 80.0)
                    )
        if self.wants("traffic_light", 0.45):
            z = zr(8.0, 35.0)
            for side in self.sides:
                if r.random() < 0.7 or side is self.sides[1]:
                    X = side.across(r.uniform(0.3, 0.8))
                    arm = r.random() < 0.4
                    self.add_object(z, lambda s, X=X, z=z, side=side, arm=arm: s._traffic_light(X, z, side, arm))
        for _ in range(int(r.poisson(0.8)) + int("traffic_sign" in self.force)):
            side = self.sides[int(r.integers(2))]
            X, z = side.across(r.uniform(0.2, max(0.3, side.sidewalk))), zr(zmin, 40.0)
            self.add_object(z, lambda s, X=X, z=z: s._sign_post(X, z))
        lanes = (self.road_left + 1.2, self.road_right - 1.2)
        n_cars = int(r.poisson(2.2))
        if n_cars == 0 and "car" in self.force:
            n_cars = 1
        for _ in range(n_cars):
            X, z = r.uniform(*lanes), zr(zmin + 1.0)
            self.add_object(z, lambda s, X=X, z=z: s._car_rear(X, z))
        for side in self.sides:
            if r.random() < 0.55:
                z = r.uniform(self.z_near, 15.0)
                for _ in range(int(r.integers(1, 6))):
                    X = side.across(-1.05)
                    self.add_object(z, lambda s, X=X, z=z: s._car_side(X, z))
                    z += r.uniform(4.8, 9.0)
        big = [e for e in ("truck", "bus") if e in self.force and self.allows(e)]
        if not big and r.random() < st.p_large_vehicle:
            big = [e for e in (str(r.choice(["truck", "bus"])),) if self.allows(e)]
        for kind in big:
            z = zr(max(zmin, 7.0), 25.0 if kind in self.force else 45.0)
            if r.random() < 0.5:
                X = float(r.uniform(*lanes))
                self.add_object(z, lambda s, X=X, z=z, kind=kind: s._big_rear(kind, X, z))
            else:
                X = self.sides[int(r.integers(2))].across(-1.4)
                self.add_object(z, lambda s, X=X, z=z, kind=kind: s._big_side(kind, X, z))
        if self.wants("train", st.p_train):
            z = zr(max(zmin, 12.0), 30.0)
            if self.allows("rail_track"):
                rail = self.new_part("rail_track", self.look("rail_track"))
                self.polygon(self.ground_quad(-80, 80, z - 0.8, z + 0.8), rail)
            X = float(r.uniform(-6, 6))
            self.add_object(z, lambda s, X=X, z=z: s._train(X, z))
        for _ in range(int(r.poisson(2.0)) + int("person" in self.force)):
            side = self.sides[int(r.integers(2))]
            if r.random() < 0.15:
                X = float(r.uniform(self.road_left, self.road_right))
            else:
                X = side.across(r.uniform(0.3, max(0.4, side.sidewalk - 0.3)))
            z = zr(zmin, 45.0)
            self.add_object(z, lambda s, X=X, z=z: s._person(X, z))
        motors = []  # one flag per ridden two-wheeler: motorcycle or bicycle
        if "motorcycle" in self.force:
            motors.append(True)
        if "rider" in self.force or (not motors and r.random() < st.p_two_wheeler):
            motors.append(bool(r.random() < 0.3))
        for motor in motors:
            side = self.sides[int(r.integers(2))]
            X, z = side.across(-r.uniform(0.6, 2.0)), zr(zmin, 18.0 if self.force & {"rider", "motorcycle"} else 35.0)
            self.add_object(z, lambda s, X=X, z=z, motor=motor: s._two_wheeler(X, z, motor, ridden=True))
        if self.wants("bicycle", 0.25) or self.wants("motorcycle", 0.1):
            side = self.sides[int(r.integers(2))]
            X, z = side.across(r.uniform(0.3, max(0.4, side.sidewalk))), zr(zmin, 18.0)
            motor = "motorcycle" in self.force and "bicycle" not in self.force
            self.add_object(z, lambda s, X=X, z=z, motor=motor: s._two_wheeler(X, z, motor, ridden=False))
        for _ in range(int(r.poisson(0.8)) + int("static" in self.force)):
            if not self.allows("static"):
                break
            side = self.sides[int(r.integers(2))]
            X, z = side.across(r.uniform(0.3, max(0.4, side.sidewalk))), zr(zmin, 35.0)
            self.add_object(z, lambda s, X=X, z=z: s._static(X, z))
        if self.wants("guard_rail", 0.08):
            X, z0 = self.sides[int(r.integers(2))].across(0.15), float(r.uniform(0, 10))
            part = self.new_part("guard_rail", self.look("guard_rail"))
            # a side plane, queued at its far end so nearer objects cover it
            self.add_object(
                z0 + 40.0, lambda s, X=X, z0=z0, p=part: s.polygon(s.side_quad(X, z0, z0 + 40.0, 0.3, 0.8), p)
            )
        self._ego = self.wants("ego_vehicle", st.p_ego_vehicle)

    # Each drawer paints one object at (X, Z); sizes are in metres.
    def _tree(self, X: float, Z: float) -> None:
        r = self.rng
        trunk_h = r.uniform(1.8, 4.0)
        trunk = self.new_part("vegetation", self.look("vegetation", (0.30, 0.22, 0.15), low=0.05, mid=0.05, high=0.06))
        self.rect(self.billboard(X, Z, r.uniform(0.25, 0.5), trunk_h + 0.5), 0, 0, 1, 1, trunk)
        crown = self.new_part("vegetation", self.look("vegetation"))
        self._crown(X, Z, trunk_h + r.uniform(1.0, 2.5), r.uniform(1.2, 3.0), crown)
        if self.sunny:
            self.shadow(self.ground_quad(X - 1.8, X + 1.8, Z - 0.5, Z + 2.5))

    def _pole(self, X: float, Z: float, with_sign: bool = False, height: float | None = None) -> None:
        r = self.rng
        h = height or r.uniform(4.5, 9.0)
        part = self.new_part("pole", self.look("pole", jitter=0.06, low=0.03, mid=0.02, high=0.03))
        self.rect(self.billboard(X, Z, r.uniform(0.15, 0.3), h), 0, 0, 1, 1, part)
        if h > 6.0 and r.random() < 0.6:  # lamp arm
            c = self.camera
            arm = r.uniform(0.8, 2.0) * (1 if X < 0 else -1)
            self.line([(c.x(X, Z), c.y(h, Z)), (c.x(X + arm, Z), c.y(h - 0.2, Z))], part, 0.12 * c.scale(Z))
        if with_sign:
            self._sign(X, Z, r.uniform(2.0, min(3.2, h - 0.5)))

    def _sign(self, X: float, Z: float, Y: float) -> None:
        r, c = self.rng, self.camera
        size = r.uniform(0.55, 0.95)
        back = r.random() < 0.3
        look = self.look("traffic_sign", (0.50, 0.50, 0.52) if back else None, jitter=0.06, low=0.03, mid=0.02)
        part = self.new_part("traffic_sign", look)
        box = self.billboard(X, Z, size, size, Y0=Y)
        shape = int(r.integers(4))
        if shape == 0:
            s = c.scale(Z) * size / 2
            self.ellipse(c.x(X, Z), c.y(Y + size / 2, Z), s, s, part)
        elif shape == 1:
            self.polygon(
                self.uv(box, [(0, 1), (1, 1), (0.5, 0)] if r.random() < 0.5 else [(0, 0), (1, 0), (0.5, 1)]), part
            )
        elif shape == 2:
            self.rect(box, 0, 0.15, 1, 0.85, part)
        else:
            k = [
                (0.5 + 0.5 * math.cos(a), 0.5 + 0.5 * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 9)[:-1] + math.pi / 8
            ]
            self.polygon(self.uv(box, k), part)

    def _sign_post(self, X: float, Z: float) -> None:
        h = self.rng.uniform(2.6, 3.4)
        self._pole(X, Z, with_sign=self.allows("traffic_sign"), height=h)

    def _traffic_light(self, X: float, Z: float, side: _Side, arm: bool) -> None:
        r, c = self.rng, self.camera
        h = r.uniform(3.2, 4.5)
        self._pole(X, Z, height=h + (1.0 if arm else 0.0))
        heads = [(X, h - 0.1)]
        if arm:
            reach = r.uniform(2.5, 5.0)
            pole = self.new_part("pole", self.look("pole", low=0.03, mid=0.02, high=0.03))
            Xe = X - side.sign * reach
            self.line([(c.x(X, Z), c.y(h + 0.9, Z)), (c.x(Xe, Z), c.y(h + 0.9, Z))], pole, 0.15 * c.scale(Z))
            heads.append((Xe, h - 0.1))
        for hx, hy in heads:
            body = self.new_part("traffic_light", self.look("traffic_light", (0.12, 0.12, 0.11), low=0.03))
            box = self.billboard(hx, Z, 0.35, 0.95, Y0=hy)
            self.rect(box, 0, 0, 1, 1, body)
            lit = int(r.integers(3))
            lamp_color = [(0.9, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.85, 0.35)][lit]
            lamp = self.new_part("traffic_light", self.look("traffic_light", lamp_color, low=0.02, mid=0.0, high=0.02))
            s = c.scale(Z)
            self.ellipse(c.x(hx, Z), c.y(hy + 0.8 - 0.3 * lit, Z), 0.1 * s, 0.1 * s, lamp)

    def _tyre_part(self, element: str, obj: int) -> int:
        """A part of ``obj`` in tyre rubber (labelled as the vehicle ``element``)."""
        return self.new_part(element, self.look(element, (0.05, 0.05, 0.05), low=0.02, mid=0.02, high=0.03), obj)

    def _glass_part(self, element: str, obj: int, **texture: float) -> int:
        """A part of ``obj`` in dark window glass; ``texture`` overrides the default ``low=0.1``."""
        return self.new_part(element, self.look(element, (0.10, 0.12, 0.15), **(texture or {"low": 0.1})), obj)

    def _rear_tyres(
        self, box: Box, us: Sequence[float], width_u: float, height_v: float, obj: int, element: str
    ) -> None:
        """Tyres seen from behind: dark rectangles standing on the ground at ``u`` in ``us``."""
        tyre = self._tyre_part(element, obj)
        for u0 in us:
            self.rect(box, u0, 0, u0 + width_u, height_v, tyre)

    def _wheels(self, box: Box, us: Sequence[float], radius_v: float, obj: int, element: str) -> None:
        """Side-view wheels: discs of radius ``radius_v`` (box heights) centred at ``u`` in ``us``."""
        x0, yt, x1, yb = box
        tyre = self._tyre_part(element, obj)
        rpx = radius_v * (yb - yt)
        for u in us:
            self.ellipse(x0 + u * (x1 - x0), yb - rpx, rpx, rpx, tyre)

    def _car_rear(self, X: float, Z: float) -> None:
        r = self.rng
        obj = self.new_object()
        box = self.billboard(X, Z, r.uniform(1.65, 1.95), r.uniform(1.35, 1.65))
        body = self.new_part("car", self.look("car", jitter=0.05, low=0.08, mid=0.03, high=0.02), obj)
        self.polygon(self.uv(box, [(0, 0.1), (1, 0.1), (1, 0.55), (0.86, 0.95), (0.14, 0.95), (0, 0.55)]), body)
        glass = self._glass_part("car", obj, low=0.12, mid=0.03, high=0.02)
        self.polygon(self.uv(box, [(0.12, 0.58), (0.88, 0.58), (0.8, 0.9), (0.2, 0.9)]), glass)
        lights = self.new_part("car", self.look("car", (0.7, 0.1, 0.05), low=0.02, mid=0.0, high=0.02), obj)
        for u0 in (0.03, 0.8):
            self.rect(box, u0, 0.38, u0 + 0.17, 0.5, lights)
        self._rear_tyres(box, (0.05, 0.75), 0.2, 0.14, obj, "car")
        self._contact_shadow(X, Z, box[2] - box[0])

    def _car_side(self, X: float, Z: float) -> None:
        r = self.rng
        obj = self.new_object()
        box = self.billboard(X, Z, r.uniform(3.9, 4.7), r.uniform(1.35, 1.6))
        box = self.mirrored(box)  # facing either way
        body = self.new_part("car", self.look("car", jitter=0.05, low=0.08, mid=0.03, high=0.02), obj)
        self.polygon(
            self.uv(
                box, [(0, 0.15), (1, 0.15), (1, 0.5), (0.82, 0.55), (0.68, 0.95), (0.3, 0.95), (0.18, 0.55), (0, 0.5)]
            ),
            body,
        )
        glass = self._glass_part("car", obj, low=0.12, mid=0.03, high=0.02)
        self.polygon(self.uv(box, [(0.3, 0.58), (0.66, 0.58), (0.64, 0.88), (0.33, 0.88)]), glass)
        self._wheels(box, (0.2, 0.8), 0.17, obj, "car")
        self._contact_shadow(X, Z, abs(box[2] - box[0]))

    def _big_rear(self, kind: str, X: float, Z: float) -> None:
        r = self.rng
        obj = self.new_object()
        box = self.billboard(X, Z, r.uniform(2.3, 2.6), r.uniform(2.9, 3.8))
        body = self.new_part(kind, self.look(kind, jitter=0.06, low=0.07, mid=0.03, high=0.02), obj)
        self.rect(box, 0, 0.1, 1, 1, body)
        if kind == "bus":
            glass = self._glass_part(kind, obj)
            self.rect(box, 0.08, 0.6, 0.92, 0.92, glass)
        else:  # cargo doors
            seam = self.new_part(kind, self.look(kind, (0.25, 0.25, 0.25), low=0.02), obj)
            self.rect(box, 0.49, 0.15, 0.51, 0.97, seam)
        self._rear_tyres(box, (0.04, 0.74), 0.22, 0.12, obj, kind)
        self._contact_shadow(X, Z, box[2] - box[0])

    def _big_side(self, kind: str, X: float, Z: float) -> None:
        r = self.rng
        obj = self.new_object()
        length = r.uniform(7.0, 10.0) if kind == "truck" else r.uniform(10.0, 13.0)
        box = self.billboard(X, Z, length, r.uniform(3.0, 3.8))
        box = self.mirrored(box)
        look = self.look(kind, jitter=0.06, low=0.07, mid=0.03, high=0.02)
        if kind == "truck":
            cab = self.new_part(kind, look, obj)
            self.polygon(self.uv(box, [(0.8, 0.1), (1, 0.1), (1, 0.7), (0.9, 0.78), (0.8, 0.78)]), cab)
            cargo = self.new_part(kind, self.look(kind, _WHITE if r.random() < 0.5 else None, low=0.06), obj)
            self.rect(box, 0, 0.15, 0.78, 1, cargo)
            glass = self._glass_part(kind, obj)
            self.polygon(self.uv(box, [(0.88, 0.5), (0.98, 0.5), (0.98, 0.68), (0.88, 0.72)]), glass)
            self._wheels(box, (0.12, 0.3, 0.88), 0.12, obj, kind)
        else:
            body = self.new_part(kind, look, obj)
            self.polygon(self.uv(box, [(0, 0.08), (1, 0.08), (1, 0.95), (0.97, 1), (0, 1)]), body)
            glass = self._glass_part(kind, obj)
            n = int(r.integers(4, 8))
            for i in range(n):
                u0 = 0.04 + i * 0.92 / n
                self.rect(box, u0, 0.55, u0 + 0.8 * 0.92 / n, 0.88, glass)
            self._wheels(box, (0.15, 0.8), 0.1, obj, kind)
        self._contact_shadow(X, Z, abs(box[2] - box[0]))

    def _train(self, X: float, Z: float) -> None:
        r, c = self.rng, self.camera
        obj = self.new_object()
        h = r.uniform(3.4, 3.9)
        box = self.billboard(X, Z, r.uniform(20, 32), h)
        body = self.new_part("train", self.look("train", jitter=0.05, low=0.06, mid=0.03, high=0.02), obj)
        self.rect(box, 0, 0.05, 1, 0.92, body)
        glass = self._glass_part("train", obj)
        for i in range(int(r.integers(8, 14))):
            u0 = 0.02 + i * 0.075
            if u0 > 0.95:
                break
            self.rect(box, u0, 0.5, u0 + 0.055, 0.82, glass)
        roof = self.new_part("train", self.look("train", (0.3, 0.3, 0.32), low=0.03), obj)
        self.line(
            [(c.x(X - 2, Z), c.y(h, Z)), (c.x(X, Z), c.y(h + 1.0, Z)), (c.x(X + 2, Z), c.y(h, Z))],
            roof,
            0.08 * c.scale(Z),
        )

    def _person(
        self, X: float, Z: float, element: str = "person", Y0: float = 0.0, obj: int | None = None, seated: bool = False
    ) -> None:
        r = self.rng
        obj = self.new_object() if obj is None else obj
        h = r.uniform(1.55, 1.95) * (0.75 if seated else 1.0)
        box = self.billboard(X + r.normal(0, 0.05), Z, h * r.uniform(0.26, 0.34), h, Y0=Y0)
        skin = self.look(element, _PALETTES["skin"][int(r.integers(3))], low=0.03, mid=0.02, high=0.02)
        top = self.look(element, _PALETTES["clothes"][int(r.integers(8))], low=0.05, mid=0.04, high=0.04)
        legs = self.look(element, _PALETTES["clothes"][int(r.integers(8))], low=0.05, mid=0.04, high=0.04)
        head = self.new_part(element, skin, obj)
        x0, yt, x1, yb = box
        hw, hh = 0.18 * (x1 - x0), 0.065 * (yb - yt)
        self.ellipse(0.5 * (x0 + x1), yt + hh, hw, hh, head)
        torso = self.new_part(element, top, obj)
        self.polygon(
            self.uv(box, [(0.12, 0.45), (0.88, 0.45), (0.95, 0.84), (0.75, 0.87), (0.25, 0.87), (0.05, 0.84)]), torso
        )
        lp = self.new_part(element, legs, obj)
        if seated:  # legs forward to the pedals
            self.polygon(self.uv(box, [(0.2, 0.47), (0.8, 0.47), (0.95, 0.05), (0.6, 0.05)]), lp)
        else:
            stride = r.uniform(0.0, 0.15)
            self.polygon(self.uv(box, [(0.2 - stride, 0), (0.45, 0), (0.5, 0.47), (0.18, 0.47)]), lp)
            self.polygon(self.uv(box, [(0.55, 0), (0.8 + stride, 0), (0.82, 0.47), (0.5, 0.47)]), lp)
        if element == "person" and Y0 == 0.0:
            self._contact_shadow(X, Z, 0.8 * (x1 - x0))

    def _two_wheeler(self, X: float, Z: float, motor: bool, ridden: bool) -> None:
        c = self.camera
        kind = "motorcycle" if motor else "bicycle"
        if not self.allows(kind):
            return
        obj = self.new_object()
        length, h = (2.0, 1.15) if motor else (1.75, 1.05)
        box = self.billboard(X, Z, length, h)
        box = self.mirrored(box)
        x0, yt, x1, yb = box
        s = c.scale(Z)
        look = self.look(kind, jitter=0.06, low=0.04, mid=0.03, high=0.03)
        frame = self.new_part(kind, look, obj)
        tyre = self.new_part(kind, self.look(kind, (0.05, 0.05, 0.05), low=0.02), obj)
        rad = 0.34 * (yb - yt)
        for u in (0.18, 0.82):
            cx = x0 + u * (x1 - x0)
            if motor:
                self.ellipse(cx, yb - rad, rad, rad, tyre)
            else:
                self.ellipse(cx, yb - rad, rad, rad, tyre, width=max(1, int(round(0.06 * s))))
        if motor:
            self.polygon(self.uv(box, [(0.2, 0.35), (0.8, 0.35), (0.85, 0.7), (0.6, 0.8), (0.25, 0.7)]), frame)
        else:
            pts = self.uv(box, [(0.18, 0.34), (0.45, 0.34), (0.75, 0.72), (0.38, 0.72), (0.18, 0.34)])
            self.line(pts, frame, 0.05 * s)
            self.line(self.uv(box, [(0.45, 0.34), (0.35, 0.85)]), frame, 0.05 * s)
            self.line(self.uv(box, [(0.82, 0.34), (0.72, 0.9), (0.8, 0.95)]), frame, 0.05 * s)
        if ridden and self.allows("rider"):
            rider_obj = self.new_object()
            self._person(X, Z - 0.05, element="rider", Y0=0.25 if not motor else 0.35, obj=rider_obj, seated=True)

    def _static(self, X: float, Z: float) -> None:
        r = self.rng
        part = self.new_part("static", self.look("static", jitter=0.06, low=0.06, mid=0.05, high=0.04))
        kind = int(r.integers(3))
        if kind == 0:  # bin
            self.polygon(self.uv(self.billboard(X, Z, 0.6, 1.0), [(0.05, 0), (0.95, 0), (1, 1), (0, 1)]), part)
        elif kind == 1:  # bench
            box = self.billboard(X, Z, 1.8, 0.9)
            self.rect(box, 0, 0.45, 1, 0.55, part)
            self.rect(box, 0, 0.75, 1, 1, part)
            for u0 in (0.05, 0.9):
                self.rect(box, u0, 0, u0 + 0.05, 0.75, part)
        else:  # box / planter
            self.rect(self.billboard(X, Z, r.uniform(0.6, 1.4), r.uniform(0.4, 0.9)), 0, 0, 1, 1, part)

    def _contact_shadow(self, X: float, Z: float, width_px: float) -> None:
        c = self.camera
        w = width_px / c.scale(Z)
        self.shadow(self.ground_quad(X - 0.5 * w, X + 0.5 * w, Z - 0.3, Z + 1.2))

    def _ego_vehicle(self) -> None:
        r = self.rng
        W, H = self.width, self.height
        h = H * r.uniform(0.06, 0.12)
        part = self.new_part("ego_vehicle", self.look("ego_vehicle", (0.10, 0.10, 0.11), low=0.25, mid=0.05, high=0.02))
        self.polygon(
            [
                (0, H),
                (0, H - 0.5 * h),
                (0.18 * W, H - 0.9 * h),
                (0.5 * W, H - h),
                (0.82 * W, H - 0.9 * h),
                (W, H - 0.5 * h),
                (W, H),
            ],
            part,
        )

    # ---------------------------------------------------------------- rendering
    def _fields(self) -> np.ndarray:
        """Texture fields, shape (K, H, W), each roughly zero-mean with unit-scale amplitude."""
        r = self.rng
        H, W = self.height, self.width
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)

        def smooth(cell_px: float) -> np.ndarray:
            cell = max(2, int(round(cell_px * self.px)))
            grid = r.standard_normal((H // cell + 3, W // cell + 3)).astype(np.float32)
            up = ndimage.zoom(grid, cell, order=1)
            oy, ox = (int(v) for v in r.integers(0, cell, 2))
            f = up[oy : oy + H, ox : ox + W]
            return f / (f.std() + 1e-6)

        low, mid = smooth(r.uniform(24, 48)), smooth(r.uniform(5, 10))
        high = r.standard_normal((H, W)).astype(np.float32)
        pw, ph = r.uniform(5, 10) * self.px, r.uniform(6, 12) * self.px
        ox, oy = r.uniform(0, pw), r.uniform(0, ph)
        win = (((xx + ox) % pw) < 0.55 * pw) & (((yy + oy) % ph) < 0.5 * ph)
        windows = np.where(win, -1.0, 0.4).astype(np.float32)
        period = r.uniform(2.5, 5.0) * self.px
        stripes = np.sign(np.sin(2 * math.pi * (xx + r.uniform(0, period)) / period)).astype(np.float32)
        tp = r.uniform(4, 8) * self.px
        tiles = np.where((((xx + yy * 0.3) % tp) < 1.0) | ((yy % (0.6 * tp)) < 1.0), -1.0, 0.15).astype(np.float32)
        hz = max(self.camera.horizon, 1.0)
        vgrad = np.clip(yy / hz, 0, 1) - 0.5
        return np.stack([low, mid, high, windows, stripes, tiles, vgrad])

    def _pattern(self, look: Appearance, mask: np.ndarray) -> np.ndarray:
        """Colours (N, 3) for the masked pixels of a patterned part."""
        kind, color2, period, angle = look.pattern  # type: ignore[misc]
        ys, xs = np.nonzero(mask)
        u = xs * math.cos(angle) + ys * math.sin(angle)
        v = -xs * math.sin(angle) + ys * math.cos(angle)
        if kind == "rainbow":
            hue = (u / (4 * period)) % 1.0
            rgb = np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2), 2 - np.abs(hue * 6 - 4)], 1)
            return np.clip(rgb, 0, 1)
        if kind == "checker":
            t = (np.floor(u / period) + np.floor(v / period)) % 2
        elif kind == "stripes":
            t = np.floor(u / period) % 2
        elif kind == "dots":
            t = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2) < (0.3 * period) ** 2
        else:  # rings around the part's centre
            d = np.hypot(xs - xs.mean(), ys - ys.mean())
            t = np.floor(d / period) % 2
        t = np.asarray(t, np.float32)[:, None]
        return look.color[None] * (1 - t) + np.asarray(color2)[None] * t

    def render(self) -> PaintedScene:
        """Paint the queued objects far to near, then texture, light and degrade the image."""
        r, st = self.rng, self.style
        for _, _, draw in sorted(self._queue, key=lambda q: (-q[0], q[1])):
            draw(self)
        if self._ego:
            self._ego_vehicle()
        canvas = np.asarray(self._canvas, dtype=np.int64)
        looks = self._looks
        colors = np.zeros((len(looks) + 1, 3), np.float32)
        weights = np.zeros((len(looks) + 1, len(_FIELDS)), np.float32)
        for i, lk in enumerate(looks, start=1):
            colors[i] = lk.color
            weights[i] = lk.weights()
        fields = self._fields()
        modulation = np.einsum("hwk,khw->hw", weights[canvas], fields)
        img = colors[canvas] * (1.0 + modulation)[..., None]
        for i, lk in enumerate(looks, start=1):
            if lk.pattern is not None:
                mask = canvas == i
                if mask.any():
                    shade = (1.0 + modulation[mask] * 0.5)[:, None]
                    img[mask] = self._pattern(lk, mask) * shade
        sh = ndimage.gaussian_filter(np.asarray(self._shadow, np.float32) / 255.0, 0.8 * self.px)
        img *= (1.0 - (r.uniform(0.35, 0.6) if self.sunny else 0.3) * sh)[..., None]
        if r.random() < st.p_fog:
            H = self.height
            yy = np.arange(H, dtype=np.float32)[:, None]
            w = r.uniform(0.25, 0.65) * np.exp(-(((yy - self.camera.horizon) / (r.uniform(0.12, 0.3) * H)) ** 2))
            fog = np.asarray([0.75, 0.77, 0.8], np.float32) * r.uniform(0.8, 1.1)
            img = img * (1 - w[..., None]) + fog * w[..., None]
        gain = r.uniform(*st.illumination)
        cast = r.normal(1.0, 0.05, 3).astype(np.float32)
        img = np.clip(img * gain * cast, 0, 1) ** r.uniform(0.85, 1.15)
        sigma = r.uniform(*st.blur_sigma) * self.px
        if sigma > 0.05:
            img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
        img = img + r.normal(0, r.uniform(*st.noise_std), img.shape).astype(np.float32)
        image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        part_element = np.asarray([ELEMENT_INDEX["sky"], *self._part_element], np.uint8)
        part_object = np.asarray([0, *self._part_object], np.int32)
        return PaintedScene(image=image, elements=part_element[canvas], objects=part_object[canvas])


# ---------------------------------------------------------------- writing a generated data set
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
