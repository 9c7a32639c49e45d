"""The drawing surface of one scene: a random pinhole camera, an instance canvas of painted parts (each with its
element, object and look), a shadow mask and a queue of objects painted far to near. The primitives paint in screen
coordinates or in metres (ground, side and front planes, billboards); ``render`` textures the parts (``shading``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from synthcp2d.data.scene_painter.elements import (
    ELEMENT_INDEX,
    ELEMENTS,
    FIELDS,
    Appearance,
    Box,
    Camera,
    PaintedScene,
    Point,
    SceneStyle,
)
from synthcp2d.data.scene_painter.palette import PALETTES, STUFF
from synthcp2d.data.scene_painter.shading import shade

__all__ = ["SceneCanvas"]


class SceneCanvas:
    """Where one scene is painted: a camera drawn from ``rng``, parts, a shadow mask, objects queued by depth.

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
        self._queue: list[tuple[float, int, Callable[[SceneCanvas], None]]] = []
        # per-image, per-class tint: the same class changes colour from image to image
        self._tint = {name: r.normal(1.0, 0.07, 3) * r.uniform(0.85, 1.15) for name in ELEMENTS}
        self.sunny = r.random() < self.style.p_sunny
        self.sun_side = int(r.choice([-1, 1]))

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
        stuff = STUFF.get(element)
        if color is None:
            if stuff is not None:
                color = stuff[0]
            elif element in PALETTES:
                pal = PALETTES[element]
                color = pal[int(r.integers(len(pal)))]
            else:
                color = (0.5, 0.5, 0.5)
        base = np.asarray(color, np.float64) * self._tint.get(element, 1.0) * r.normal(1.0, jitter, 3)
        params = dict(zip(FIELDS, stuff[1:])) if stuff is not None else {}
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

    # ---------------------------------------------------------------- screen coordinates
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

    # ---------------------------------------------------------------- metres
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

    # ---------------------------------------------------------------- objects and rendering
    def add_object(self, Z: float, draw: Callable[[SceneCanvas], None]) -> None:
        """Queue an object at depth ``Z`` (painted far to near by ``render``; ``-inf``: after everything else)."""
        self._queue.append((float(Z), len(self._queue), draw))

    def render(self) -> PaintedScene:
        """Paint the queued objects far to near, then texture, light and degrade the image (``shading.shade``)."""
        for _, _, draw in sorted(self._queue, key=lambda q: (-q[0], q[1])):
            draw(self)
        canvas = np.asarray(self._canvas, dtype=np.int64)
        image = shade(
            canvas,
            self._looks,
            np.asarray(self._shadow, np.float32) / 255.0,
            rng=self.rng,
            style=self.style,
            sunny=self.sunny,
            horizon=self.camera.horizon,
            px=self.px,
        )
        part_element = np.asarray([ELEMENT_INDEX["sky"], *self._part_element], np.uint8)
        part_object = np.asarray([0, *self._part_object], np.int32)
        return PaintedScene(image=image, elements=part_element[canvas], objects=part_object[canvas])
