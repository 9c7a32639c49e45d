"""Road users, one drawer per object at ``(X, Z)`` (sizes in metres; the parts of one object share an object id):
cars seen from behind or from the side, trucks and buses, trams, people, bicycles and motorcycles (ridden or
parked) and the recording car's bonnet."""

from __future__ import annotations

from collections.abc import Sequence

from synthcp2d.data.scene_painter.canvas import SceneCanvas
from synthcp2d.data.scene_painter.elements import Box
from synthcp2d.data.scene_painter.palette import PALETTES, WHITE

__all__ = ["big_rear", "big_side", "car_rear", "car_side", "ego_vehicle", "person", "train", "two_wheeler"]


def _contact_shadow(scene: SceneCanvas, X: float, Z: float, width_px: float) -> None:
    """The shadow on the ground under an object ``width_px`` pixels wide."""
    c = scene.camera
    w = width_px / c.scale(Z)
    scene.shadow(scene.ground_quad(X - 0.5 * w, X + 0.5 * w, Z - 0.3, Z + 1.2))


def _tyre_part(scene: SceneCanvas, element: str, obj: int) -> int:
    """A part of ``obj`` in tyre rubber (labelled as the vehicle ``element``)."""
    return scene.new_part(element, scene.look(element, (0.05, 0.05, 0.05), low=0.02, mid=0.02, high=0.03), obj)


def _glass_part(scene: SceneCanvas, element: str, obj: int, **texture: float) -> int:
    """A part of ``obj`` in dark window glass; ``texture`` overrides the default ``low=0.1``."""
    return scene.new_part(element, scene.look(element, (0.10, 0.12, 0.15), **(texture or {"low": 0.1})), obj)


def _rear_tyres(
    scene: SceneCanvas, box: Box, us: Sequence[float], width_u: float, height_v: float, obj: int, element: str
) -> None:
    """Tyres seen from behind: dark rectangles standing on the ground at ``u`` in ``us``."""
    tyre = _tyre_part(scene, element, obj)
    for u0 in us:
        scene.rect(box, u0, 0, u0 + width_u, height_v, tyre)


def _wheels(scene: SceneCanvas, box: Box, us: Sequence[float], radius_v: float, obj: int, element: str) -> None:
    """Side-view wheels: discs of radius ``radius_v`` (box heights) centred at ``u`` in ``us``."""
    x0, yt, x1, yb = box
    tyre = _tyre_part(scene, element, obj)
    rpx = radius_v * (yb - yt)
    for u in us:
        scene.ellipse(x0 + u * (x1 - x0), yb - rpx, rpx, rpx, tyre)


def car_rear(scene: SceneCanvas, X: float, Z: float) -> None:
    """A car in the lane ahead, seen from behind."""
    r = scene.rng
    obj = scene.new_object()
    box = scene.billboard(X, Z, r.uniform(1.65, 1.95), r.uniform(1.35, 1.65))
    body = scene.new_part("car", scene.look("car", jitter=0.05, low=0.08, mid=0.03, high=0.02), obj)
    scene.polygon(scene.uv(box, [(0, 0.1), (1, 0.1), (1, 0.55), (0.86, 0.95), (0.14, 0.95), (0, 0.55)]), body)
    glass = _glass_part(scene, "car", obj, low=0.12, mid=0.03, high=0.02)
    scene.polygon(scene.uv(box, [(0.12, 0.58), (0.88, 0.58), (0.8, 0.9), (0.2, 0.9)]), glass)
    lights = scene.new_part("car", scene.look("car", (0.7, 0.1, 0.05), low=0.02, mid=0.0, high=0.02), obj)
    for u0 in (0.03, 0.8):
        scene.rect(box, u0, 0.38, u0 + 0.17, 0.5, lights)
    _rear_tyres(scene, box, (0.05, 0.75), 0.2, 0.14, obj, "car")
    _contact_shadow(scene, X, Z, box[2] - box[0])


def car_side(scene: SceneCanvas, X: float, Z: float) -> None:
    """A car parked along the curb, seen from the side, facing either way."""
    r = scene.rng
    obj = scene.new_object()
    box = scene.billboard(X, Z, r.uniform(3.9, 4.7), r.uniform(1.35, 1.6))
    box = scene.mirrored(box)  # facing either way
    body = scene.new_part("car", scene.look("car", jitter=0.05, low=0.08, mid=0.03, high=0.02), obj)
    scene.polygon(
        scene.uv(
            box, [(0, 0.15), (1, 0.15), (1, 0.5), (0.82, 0.55), (0.68, 0.95), (0.3, 0.95), (0.18, 0.55), (0, 0.5)]
        ),
        body,
    )
    glass = _glass_part(scene, "car", obj, low=0.12, mid=0.03, high=0.02)
    scene.polygon(scene.uv(box, [(0.3, 0.58), (0.66, 0.58), (0.64, 0.88), (0.33, 0.88)]), glass)
    _wheels(scene, box, (0.2, 0.8), 0.17, obj, "car")
    _contact_shadow(scene, X, Z, abs(box[2] - box[0]))


def big_rear(scene: SceneCanvas, kind: str, X: float, Z: float) -> None:
    """A truck or bus (``kind``) seen from behind."""
    r = scene.rng
    obj = scene.new_object()
    box = scene.billboard(X, Z, r.uniform(2.3, 2.6), r.uniform(2.9, 3.8))
    body = scene.new_part(kind, scene.look(kind, jitter=0.06, low=0.07, mid=0.03, high=0.02), obj)
    scene.rect(box, 0, 0.1, 1, 1, body)
    if kind == "bus":
        glass = _glass_part(scene, kind, obj)
        scene.rect(box, 0.08, 0.6, 0.92, 0.92, glass)
    else:  # cargo doors
        seam = scene.new_part(kind, scene.look(kind, (0.25, 0.25, 0.25), low=0.02), obj)
        scene.rect(box, 0.49, 0.15, 0.51, 0.97, seam)
    _rear_tyres(scene, box, (0.04, 0.74), 0.22, 0.12, obj, kind)
    _contact_shadow(scene, X, Z, box[2] - box[0])


def big_side(scene: SceneCanvas, kind: str, X: float, Z: float) -> None:
    """A truck (cab and cargo box) or bus (row of windows) seen from the side."""
    r = scene.rng
    obj = scene.new_object()
    length = r.uniform(7.0, 10.0) if kind == "truck" else r.uniform(10.0, 13.0)
    box = scene.billboard(X, Z, length, r.uniform(3.0, 3.8))
    box = scene.mirrored(box)
    look = scene.look(kind, jitter=0.06, low=0.07, mid=0.03, high=0.02)
    if kind == "truck":
        cab = scene.new_part(kind, look, obj)
        scene.polygon(scene.uv(box, [(0.8, 0.1), (1, 0.1), (1, 0.7), (0.9, 0.78), (0.8, 0.78)]), cab)
        cargo = scene.new_part(kind, scene.look(kind, WHITE if r.random() < 0.5 else None, low=0.06), obj)
        scene.rect(box, 0, 0.15, 0.78, 1, cargo)
        glass = _glass_part(scene, kind, obj)
        scene.polygon(scene.uv(box, [(0.88, 0.5), (0.98, 0.5), (0.98, 0.68), (0.88, 0.72)]), glass)
        _wheels(scene, box, (0.12, 0.3, 0.88), 0.12, obj, kind)
    else:
        body = scene.new_part(kind, look, obj)
        scene.polygon(scene.uv(box, [(0, 0.08), (1, 0.08), (1, 0.95), (0.97, 1), (0, 1)]), body)
        glass = _glass_part(scene, kind, obj)
        n = int(r.integers(4, 8))
        for i in range(n):
            u0 = 0.04 + i * 0.92 / n
            scene.rect(box, u0, 0.55, u0 + 0.8 * 0.92 / n, 0.88, glass)
        _wheels(scene, box, (0.15, 0.8), 0.1, obj, kind)
    _contact_shadow(scene, X, Z, abs(box[2] - box[0]))


def train(scene: SceneCanvas, X: float, Z: float) -> None:
    """A tram crossing the street, with its pantograph."""
    r, c = scene.rng, scene.camera
    obj = scene.new_object()
    h = r.uniform(3.4, 3.9)
    box = scene.billboard(X, Z, r.uniform(20, 32), h)
    body = scene.new_part("train", scene.look("train", jitter=0.05, low=0.06, mid=0.03, high=0.02), obj)
    scene.rect(box, 0, 0.05, 1, 0.92, body)
    glass = _glass_part(scene, "train", obj)
    for i in range(int(r.integers(8, 14))):
        u0 = 0.02 + i * 0.075
        if u0 > 0.95:
            break
        scene.rect(box, u0, 0.5, u0 + 0.055, 0.82, glass)
    roof = scene.new_part("train", scene.look("train", (0.3, 0.3, 0.32), low=0.03), obj)
    scene.line(
        [(c.x(X - 2, Z), c.y(h, Z)), (c.x(X, Z), c.y(h + 1.0, Z)), (c.x(X + 2, Z), c.y(h, Z))],
        roof,
        0.08 * c.scale(Z),
    )


def person(
    scene: SceneCanvas,
    X: float,
    Z: float,
    element: str = "person",
    Y0: float = 0.0,
    obj: int | None = None,
    seated: bool = False,
) -> None:
    """A pedestrian (head, torso, striding legs), or seated on a two-wheeler with ``element="rider"``."""
    r = scene.rng
    obj = scene.new_object() if obj is None else obj
    h = r.uniform(1.55, 1.95) * (0.75 if seated else 1.0)
    box = scene.billboard(X + r.normal(0, 0.05), Z, h * r.uniform(0.26, 0.34), h, Y0=Y0)
    skin = scene.look(element, PALETTES["skin"][int(r.integers(3))], low=0.03, mid=0.02, high=0.02)
    top = scene.look(element, PALETTES["clothes"][int(r.integers(8))], low=0.05, mid=0.04, high=0.04)
    legs = scene.look(element, PALETTES["clothes"][int(r.integers(8))], low=0.05, mid=0.04, high=0.04)
    head = scene.new_part(element, skin, obj)
    x0, yt, x1, yb = box
    hw, hh = 0.18 * (x1 - x0), 0.065 * (yb - yt)
    scene.ellipse(0.5 * (x0 + x1), yt + hh, hw, hh, head)
    torso = scene.new_part(element, top, obj)
    scene.polygon(
        scene.uv(box, [(0.12, 0.45), (0.88, 0.45), (0.95, 0.84), (0.75, 0.87), (0.25, 0.87), (0.05, 0.84)]), torso
    )
    lp = scene.new_part(element, legs, obj)
    if seated:  # legs forward to the pedals
        scene.polygon(scene.uv(box, [(0.2, 0.47), (0.8, 0.47), (0.95, 0.05), (0.6, 0.05)]), lp)
    else:
        stride = r.uniform(0.0, 0.15)
        scene.polygon(scene.uv(box, [(0.2 - stride, 0), (0.45, 0), (0.5, 0.47), (0.18, 0.47)]), lp)
        scene.polygon(scene.uv(box, [(0.55, 0), (0.8 + stride, 0), (0.82, 0.47), (0.5, 0.47)]), lp)
    if element == "person" and Y0 == 0.0:
        _contact_shadow(scene, X, Z, 0.8 * (x1 - x0))


def two_wheeler(scene: SceneCanvas, X: float, Z: float, motor: bool, ridden: bool) -> None:
    """A motorcycle (``motor``) or bicycle seen from the side, ``ridden`` by a rider where riders are allowed."""
    c = scene.camera
    kind = "motorcycle" if motor else "bicycle"
    if not scene.allows(kind):
        return
    obj = scene.new_object()
    length, h = (2.0, 1.15) if motor else (1.75, 1.05)
    box = scene.billboard(X, Z, length, h)
    box = scene.mirrored(box)
    x0, yt, x1, yb = box
    s = c.scale(Z)
    look = scene.look(kind, jitter=0.06, low=0.04, mid=0.03, high=0.03)
    frame = scene.new_part(kind, look, obj)
    tyre = scene.new_part(kind, scene.look(kind, (0.05, 0.05, 0.05), low=0.02), obj)
    rad = 0.34 * (yb - yt)
    for u in (0.18, 0.82):
        cx = x0 + u * (x1 - x0)
        if motor:
            scene.ellipse(cx, yb - rad, rad, rad, tyre)
        else:
            scene.ellipse(cx, yb - rad, rad, rad, tyre, width=max(1, int(round(0.06 * s))))
    if motor:
        scene.polygon(scene.uv(box, [(0.2, 0.35), (0.8, 0.35), (0.85, 0.7), (0.6, 0.8), (0.25, 0.7)]), frame)
    else:
        pts = scene.uv(box, [(0.18, 0.34), (0.45, 0.34), (0.75, 0.72), (0.38, 0.72), (0.18, 0.34)])
        scene.line(pts, frame, 0.05 * s)
        scene.line(scene.uv(box, [(0.45, 0.34), (0.35, 0.85)]), frame, 0.05 * s)
        scene.line(scene.uv(box, [(0.82, 0.34), (0.72, 0.9), (0.8, 0.95)]), frame, 0.05 * s)
    if ridden and scene.allows("rider"):
        rider_obj = scene.new_object()
        person(scene, X, Z - 0.05, element="rider", Y0=0.25 if not motor else 0.35, obj=rider_obj, seated=True)


def ego_vehicle(scene: SceneCanvas) -> None:
    """The recording car's bonnet across the bottom of the image."""
    r = scene.rng
    W, H = scene.width, scene.height
    h = H * r.uniform(0.06, 0.12)
    part = scene.new_part("ego_vehicle", scene.look("ego_vehicle", (0.10, 0.10, 0.11), low=0.25, mid=0.05, high=0.02))
    scene.polygon(
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
