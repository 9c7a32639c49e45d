"""The street's fixed layout, painted on construction: sky and open ground, the road with its markings, the two
sidewalks (and terrain verges), a backdrop closing the street, and along each side blocks of buildings, walls,
fences, hedges and rows of trees (queued as objects)."""

from __future__ import annotations

from functools import partial

from synthcp2d.data.scene_painter.canvas import SceneCanvas
from synthcp2d.data.scene_painter.elements import Appearance, Side, Street
from synthcp2d.data.scene_painter.furniture import crown, tree
from synthcp2d.data.scene_painter.palette import SKIES

__all__ = ["lay_out_street", "trees_along"]


def lay_out_street(scene: SceneCanvas) -> Street:
    """Draw the street's plan from the scene's rng and paint its fixed parts (far blocks first)."""
    r, c = scene.rng, scene.camera
    W, H = scene.width, scene.height
    scene.polygon([(0, 0), (W, 0), (W, H), (0, H)], scene.new_part("sky", _sky_look(scene)))
    base = "terrain" if ("terrain" in scene.force or r.random() < scene.style.terrain_share) else "ground"
    if not scene.allows(base):
        base = "terrain" if scene.allows("terrain") else "sidewalk"
    scene.polygon([(0, c.horizon), (W, c.horizon), (W, H), (0, H)], scene.new_part(base, scene.look(base)))

    road_left, road_right = -r.uniform(2.5, 7.0), r.uniform(2.5, 7.0)
    open_end = r.random() < 0.25  # the street runs to the horizon: no backdrop
    z_end = 600.0 if open_end else r.uniform(45.0, 160.0)
    sides = []
    for sign, edge in ((-1, road_left), (1, road_right)):
        sidewalk = r.uniform(1.5, 4.5) if r.random() < 0.92 else 0.3
        verge = r.uniform(0.6, 3.5) if scene.wants("terrain", 0.35) else 0.0
        sides.append(Side(sign, edge, sidewalk, verge))
    street = Street(road_left, road_right, z_end, (sides[0], sides[1]))
    _paint_ground(scene, street)
    if not open_end:
        _paint_backdrop(scene, z_end)
    forced = [e for e in ("wall", "fence") if e in scene.force and scene.allows(e)]
    forced_side = int(r.integers(2))
    for i, side in enumerate(sides):
        _paint_side(scene, side, forced if i == forced_side else [], z_end)
    return street


def _sky_look(scene: SceneCanvas) -> Appearance:
    """Blue when sunny (mostly), else overcast or dusk; brighter towards the horizon."""
    r = scene.rng
    sky = SKIES[0] if scene.sunny and r.random() < 0.7 else SKIES[int(r.integers(1, len(SKIES)))]
    return scene.look("sky", sky, jitter=0.04, low=0.04, mid=0.01, high=0.01, vgrad=0.25)


def _paint_ground(scene: SceneCanvas, street: Street) -> None:
    """Sidewalks, verges, the road, a parking strip, lane markings and the facades' shadows on the ground."""
    r, z_end = scene.rng, street.z_end
    z_far = min(z_end, 120.0)
    for side in street.sides:
        walk = scene.new_part("sidewalk", scene.look("sidewalk", jitter=0.06))
        scene.polygon(scene.ground_quad(side.edge, side.across(side.sidewalk), 0, z_end), walk)
        if side.verge > 0:
            strip = scene.new_part("terrain", scene.look("terrain"))
            scene.polygon(scene.ground_quad(side.across(side.sidewalk), side.front, 0, z_end), strip)
    road = scene.new_part("road", scene.look("road", jitter=0.05))
    scene.polygon(scene.ground_quad(street.road_left, street.road_right, 0, z_end), road)
    if scene.wants("parking", scene.style.p_parking):
        side = street.sides[int(r.integers(2))]
        z0 = r.uniform(0, 15)
        lot = scene.new_part("parking", scene.look("parking"))
        scene.polygon(scene.ground_quad(side.edge, side.across(-2.3), z0, z0 + r.uniform(10, 40)), lot)
    if scene.wants("road_line", scene.style.p_lane_markings):
        paint = scene.new_part("road_line", scene.look("road_line", jitter=0.04))
        xc = 0.5 * (street.road_left + street.road_right) + r.uniform(-0.4, 0.4)
        z, period = r.uniform(0, 9), r.uniform(8, 12)
        while z < z_far:
            scene.polygon(scene.ground_quad(xc - 0.08, xc + 0.08, z, z + 3.0), paint)
            z += period
        if r.random() < 0.4:
            for side in street.sides:
                x = side.across(-0.3)
                scene.polygon(scene.ground_quad(x - 0.06, x + 0.06, 0, z_far), paint)
        if r.random() < 0.2:  # zebra crossing
            zc = r.uniform(8, 25)
            x = street.road_left
            while x < street.road_right - 0.4:
                scene.polygon(scene.ground_quad(x, x + 0.5, zc, zc + 3.0), paint)
                x += 1.0
    if scene.sunny:  # building shadows fall across the sidewalk and into the road
        side = street.sides[0] if scene.sun_side < 0 else street.sides[1]
        z = 0.0
        while z < z_far:
            length = r.uniform(6, 30)
            if r.random() < 0.7:
                reach = r.uniform(1.0, 9.0)
                scene.shadow(scene.ground_quad(side.front, side.front - side.sign * reach, z, z + length))
            z += length


def _paint_backdrop(scene: SceneCanvas, z: float) -> None:
    """Facades (or a row of trees) across the street's end at depth ``z``."""
    r = scene.rng
    x = -90.0
    if r.random() < 0.25:  # a row of trees closes the street
        part = scene.new_part("vegetation", scene.look("vegetation"))
        while x < 90:
            rad = r.uniform(2, 5)
            crown(scene, x, z, r.uniform(2, 6), rad, part)
            x += rad * r.uniform(1.0, 1.8)
        return
    while x < 90.0:
        w = r.uniform(8, 25)
        if r.random() < 0.85:
            part = scene.new_part("building", scene.look("building", windows=r.uniform(0.3, 0.6)))
            scene.polygon(scene.front_quad(x, x + w, z, 0, r.uniform(6, 30)), part)
        x += w


def _paint_side(scene: SceneCanvas, side: Side, forced: list[str], z_end: float) -> None:
    """Blocks along one side up to ``z_end``; the ``forced`` kinds come first."""
    r = scene.rng
    blocks: list[tuple[str, float, float]] = []
    z = 0.0
    while z < z_end and z < 250.0:  # beyond 250 m everything is sub-pixel
        length = r.uniform(8, 30)
        kind = str(r.choice(["building", "vegetation", "wall", "fence", "open"], p=[0.6, 0.14, 0.1, 0.08, 0.08]))
        if forced:  # the first blocks, long enough to reach where the side is in view
            kind = forced.pop(0)
            length = r.uniform(20, 40)
        elif not scene.allows(kind) and kind != "open":
            kind = "building"
        blocks.append((kind, z, min(z + length, z_end)))
        z += length
    for kind, z0, z1 in reversed(blocks):  # far blocks first
        _paint_block(scene, side, kind, z0, z1)


def _paint_block(scene: SceneCanvas, side: Side, kind: str, z0: float, z1: float) -> None:
    """One block from depth ``z0`` to ``z1``: a facade, a wall or fence before a facade or trees, trees, or open."""
    r = scene.rng
    front = side.front
    if kind == "building":
        _building(scene, side, front + side.sign * r.uniform(0, 1.5), z0, z1, r.uniform(5, 25))
    elif kind in ("wall", "fence"):
        if r.random() < 0.6:
            _building(scene, side, front + side.sign * r.uniform(4, 10), z0, z1, r.uniform(6, 20))
        else:
            trees_along(scene, front + side.sign * r.uniform(2, 6), z0, z1)
        if kind == "wall":
            part = scene.new_part("wall", scene.look("wall", jitter=0.06, low=0.08, mid=0.08, high=0.05))
            h = r.uniform(1.2, 3.2)
        else:
            part = scene.new_part("fence", scene.look("fence", stripes=r.uniform(0.25, 0.5), mid=0.05))
            h = r.uniform(1.0, 2.2)
        scene.polygon(scene.side_quad(front, z0, z1, 0, h), part)
    elif kind == "vegetation":
        trees_along(scene, front + side.sign * r.uniform(0.5, 4), z0, z1)
        if r.random() < 0.5:
            hedge = scene.new_part("vegetation", scene.look("vegetation"))
            scene.polygon(scene.side_quad(front, z0, z1, 0, r.uniform(0.8, 2.5)), hedge)
    elif kind == "open" and r.random() < 0.5:
        trees_along(scene, front + side.sign * r.uniform(3, 15), z0, z1)


def _building(scene: SceneCanvas, side: Side, X: float, z0: float, z1: float, h: float) -> None:
    """A facade ``h`` metres high along the street at ``X``, with its end face when it starts in view."""
    r = scene.rng
    look = scene.look("building", windows=r.uniform(0.25, 0.6), low=0.06, mid=0.04, high=0.03)
    part = scene.new_part("building", look)
    scene.polygon(scene.side_quad(X, z0, z1, 0, h), part)
    if z0 > scene.z_near:  # the end face towards the camera, in the same material, a bit darker
        face = Appearance(**{**look.__dict__, "color": look.color * r.uniform(0.65, 0.9)})
        scene.polygon(scene.front_quad(X, X + side.sign * 15.0, z0, 0, h), scene.new_part("building", face))


def trees_along(scene: SceneCanvas, X: float, z0: float, z1: float) -> None:
    """Queue a row of trees at ``X`` from depth ``z0`` to ``z1``."""
    z = z0 + scene.rng.uniform(0, 6)
    while z < z1:
        scene.add_object(z, partial(tree, X=X, Z=z))
        z += scene.rng.uniform(5, 12)
