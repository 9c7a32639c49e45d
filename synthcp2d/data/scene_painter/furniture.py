"""Street furniture and greenery, one drawer per object standing at ``(X, Z)`` (sizes in metres): trees, lamp
poles (some carrying a sign), sign posts, traffic lights and static clutter (bins, benches, planters)."""

from __future__ import annotations

import math

import numpy as np

from synthcp2d.data.scene_painter.canvas import SceneCanvas
from synthcp2d.data.scene_painter.elements import Side

__all__ = ["crown", "pole", "sign_post", "static_object", "traffic_light", "tree"]


def crown(scene: SceneCanvas, X: float, Z: float, Y: float, radius: float, part: int) -> None:
    """A tree crown: a cluster of ellipses around (X, Y) at depth Z."""
    r, c = scene.rng, scene.camera
    for _ in range(int(r.integers(3, 7))):
        dx, dy = r.normal(0, 0.45 * radius, 2)
        rr = radius * r.uniform(0.5, 0.9)
        scene.ellipse(c.x(X + dx, Z), c.y(Y + dy, Z), c.scale(Z) * rr, c.scale(Z) * rr * r.uniform(0.8, 1.1), part)


def tree(scene: SceneCanvas, X: float, Z: float) -> None:
    """A trunk and a crown; a shadow on the ground when sunny."""
    r = scene.rng
    trunk_h = r.uniform(1.8, 4.0)
    trunk = scene.new_part("vegetation", scene.look("vegetation", (0.30, 0.22, 0.15), low=0.05, mid=0.05, high=0.06))
    scene.rect(scene.billboard(X, Z, r.uniform(0.25, 0.5), trunk_h + 0.5), 0, 0, 1, 1, trunk)
    leaves = scene.new_part("vegetation", scene.look("vegetation"))
    crown(scene, X, Z, trunk_h + r.uniform(1.0, 2.5), r.uniform(1.2, 3.0), leaves)
    if scene.sunny:
        scene.shadow(scene.ground_quad(X - 1.8, X + 1.8, Z - 0.5, Z + 2.5))


def pole(scene: SceneCanvas, X: float, Z: float, with_sign: bool = False, height: float | None = None) -> None:
    """A lamp or sign pole (random height unless given), tall ones with a lamp arm over the road."""
    r = scene.rng
    h = height or r.uniform(4.5, 9.0)
    part = scene.new_part("pole", scene.look("pole", jitter=0.06, low=0.03, mid=0.02, high=0.03))
    scene.rect(scene.billboard(X, Z, r.uniform(0.15, 0.3), h), 0, 0, 1, 1, part)
    if h > 6.0 and r.random() < 0.6:  # lamp arm
        c = scene.camera
        arm = r.uniform(0.8, 2.0) * (1 if X < 0 else -1)
        scene.line([(c.x(X, Z), c.y(h, Z)), (c.x(X + arm, Z), c.y(h - 0.2, Z))], part, 0.12 * c.scale(Z))
    if with_sign:
        _sign(scene, X, Z, r.uniform(2.0, min(3.2, h - 0.5)))


def _sign(scene: SceneCanvas, X: float, Z: float, Y: float) -> None:
    """A traffic sign at height ``Y``: disc, triangle, rectangle or octagon, some seen from the back."""
    r, c = scene.rng, scene.camera
    size = r.uniform(0.55, 0.95)
    back = r.random() < 0.3
    look = scene.look("traffic_sign", (0.50, 0.50, 0.52) if back else None, jitter=0.06, low=0.03, mid=0.02)
    part = scene.new_part("traffic_sign", look)
    box = scene.billboard(X, Z, size, size, Y0=Y)
    shape = int(r.integers(4))
    if shape == 0:
        s = c.scale(Z) * size / 2
        scene.ellipse(c.x(X, Z), c.y(Y + size / 2, Z), s, s, part)
    elif shape == 1:
        scene.polygon(
            scene.uv(box, [(0, 1), (1, 1), (0.5, 0)] if r.random() < 0.5 else [(0, 0), (1, 0), (0.5, 1)]), part
        )
    elif shape == 2:
        scene.rect(box, 0, 0.15, 1, 0.85, part)
    else:
        k = [
            (0.5 + 0.5 * math.cos(a), 0.5 + 0.5 * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 9)[:-1] + math.pi / 8
        ]
        scene.polygon(scene.uv(box, k), part)


def sign_post(scene: SceneCanvas, X: float, Z: float) -> None:
    """A short pole carrying a sign (where signs are allowed)."""
    h = scene.rng.uniform(2.6, 3.4)
    pole(scene, X, Z, with_sign=scene.allows("traffic_sign"), height=h)


def traffic_light(scene: SceneCanvas, X: float, Z: float, side: Side, arm: bool) -> None:
    """A pole with a light head, and with ``arm`` a second head hanging over the road from ``side``."""
    r, c = scene.rng, scene.camera
    h = r.uniform(3.2, 4.5)
    pole(scene, X, Z, height=h + (1.0 if arm else 0.0))
    heads = [(X, h - 0.1)]
    if arm:
        reach = r.uniform(2.5, 5.0)
        beam = scene.new_part("pole", scene.look("pole", low=0.03, mid=0.02, high=0.03))
        Xe = X - side.sign * reach
        scene.line([(c.x(X, Z), c.y(h + 0.9, Z)), (c.x(Xe, Z), c.y(h + 0.9, Z))], beam, 0.15 * c.scale(Z))
        heads.append((Xe, h - 0.1))
    for hx, hy in heads:
        body = scene.new_part("traffic_light", scene.look("traffic_light", (0.12, 0.12, 0.11), low=0.03))
        box = scene.billboard(hx, Z, 0.35, 0.95, Y0=hy)
        scene.rect(box, 0, 0, 1, 1, body)
        lit = int(r.integers(3))
        lamp_color = [(0.9, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.85, 0.35)][lit]
        lamp = scene.new_part("traffic_light", scene.look("traffic_light", lamp_color, low=0.02, mid=0.0, high=0.02))
        s = c.scale(Z)
        scene.ellipse(c.x(hx, Z), c.y(hy + 0.8 - 0.3 * lit, Z), 0.1 * s, 0.1 * s, lamp)


def static_object(scene: SceneCanvas, X: float, Z: float) -> None:
    """A bin, a bench or a box / planter."""
    r = scene.rng
    part = scene.new_part("static", scene.look("static", jitter=0.06, low=0.06, mid=0.05, high=0.04))
    kind = int(r.integers(3))
    if kind == 0:  # bin
        scene.polygon(scene.uv(scene.billboard(X, Z, 0.6, 1.0), [(0.05, 0), (0.95, 0), (1, 1), (0, 1)]), part)
    elif kind == 1:  # bench
        box = scene.billboard(X, Z, 1.8, 0.9)
        scene.rect(box, 0, 0.45, 1, 0.55, part)
        scene.rect(box, 0, 0.75, 1, 1, part)
        for u0 in (0.05, 0.9):
            scene.rect(box, u0, 0, u0 + 0.05, 0.75, part)
    else:  # box / planter
        scene.rect(scene.billboard(X, Z, r.uniform(0.6, 1.4), r.uniform(0.4, 0.9)), 0, 0, 1, 1, part)
