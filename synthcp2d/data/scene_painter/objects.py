"""Where a street's objects stand: lamps, traffic lights, signs and trees along the sidewalks, cars in the lanes
and parked at the curb, trucks, buses and trams, pedestrians and two-wheelers, clutter, the ego vehicle. Each is
queued at its depth (``SceneCanvas.add_object``) and painted far to near at render time."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from synthcp2d.data.scene_painter.canvas import SceneCanvas
from synthcp2d.data.scene_painter.elements import Street
from synthcp2d.data.scene_painter.furniture import pole, sign_post, static_object, traffic_light
from synthcp2d.data.scene_painter.layout import trees_along
from synthcp2d.data.scene_painter.road_users import (
    big_rear,
    big_side,
    car_rear,
    car_side,
    ego_vehicle,
    person,
    train,
    two_wheeler,
)

__all__ = ["place_objects"]


def place_objects(scene: SceneCanvas, street: Street) -> None:
    """Queue the objects of a laid-out ``street`` (``scene.force`` makes the forced elements appear)."""
    zmin = scene.z_near + 1.0  # nearest depth an object stands at
    _place_furniture(scene, street, zmin)
    _place_vehicles(scene, street, zmin)
    _place_people(scene, street, zmin)
    _place_clutter(scene, street, zmin)
    if scene.wants("ego_vehicle", scene.style.p_ego_vehicle):
        scene.add_object(-math.inf, ego_vehicle)  # the bonnet is nearer than everything


def _depth(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A depth drawn in ``[lo, hi)``, at least 1 m deep."""
    return float(rng.uniform(lo, max(lo + 1.0, hi)))


def _place_furniture(scene: SceneCanvas, street: Street, zmin: float) -> None:
    """Street lamps (some carrying a sign) and rows of trees along each sidewalk, traffic lights, sign posts."""
    r = scene.rng
    for side in street.sides:
        z = r.uniform(0, 10)
        while z < min(street.z_end, 120.0):
            X = side.across(r.uniform(0.3, 0.7))
            sign = scene.wants("traffic_sign", 0.35)
            scene.add_object(z, partial(pole, X=X, Z=z, with_sign=sign))
            z += r.uniform(12, 28)
        if side.verge > 0 or side.sidewalk > 2.5:
            if r.random() < 0.5:
                X = side.across(side.sidewalk + side.verge * 0.5 - 0.6)
                trees_along(scene, X, 0.0, min(street.z_end, 80.0))
    if scene.wants("traffic_light", 0.45):
        z = _depth(r, 8.0, 35.0)
        for side in street.sides:
            if r.random() < 0.7 or side is street.sides[1]:
                X = side.across(r.uniform(0.3, 0.8))
                arm = r.random() < 0.4
                scene.add_object(z, partial(traffic_light, X=X, Z=z, side=side, arm=arm))
    for _ in range(int(r.poisson(0.8)) + int("traffic_sign" in scene.force)):
        side = street.sides[int(r.integers(2))]
        X, z = side.across(r.uniform(0.2, max(0.3, side.sidewalk))), _depth(r, zmin, 40.0)
        scene.add_object(z, partial(sign_post, X=X, Z=z))


def _place_vehicles(scene: SceneCanvas, street: Street, zmin: float) -> None:
    """Cars in the lanes and parked along the curbs, a truck or bus, a tram on its rail track."""
    r, st = scene.rng, scene.style
    lanes = (street.road_left + 1.2, street.road_right - 1.2)
    n_cars = int(r.poisson(2.2))
    if n_cars == 0 and "car" in scene.force:
        n_cars = 1
    for _ in range(n_cars):
        X, z = r.uniform(*lanes), _depth(r, zmin + 1.0, min(street.z_end - 2.0, 90.0))
        scene.add_object(z, partial(car_rear, X=X, Z=z))
    for side in street.sides:
        if r.random() < 0.55:
            z = r.uniform(scene.z_near, 15.0)
            for _ in range(int(r.integers(1, 6))):
                X = side.across(-1.05)
                scene.add_object(z, partial(car_side, X=X, Z=z))
                z += r.uniform(4.8, 9.0)
    big = [e for e in ("truck", "bus") if e in scene.force and scene.allows(e)]
    if not big and r.random() < st.p_large_vehicle:
        big = [e for e in (str(r.choice(["truck", "bus"])),) if scene.allows(e)]
    for kind in big:
        z = _depth(r, max(zmin, 7.0), 25.0 if kind in scene.force else 45.0)
        if r.random() < 0.5:
            X = float(r.uniform(*lanes))
            scene.add_object(z, partial(big_rear, kind=kind, X=X, Z=z))
        else:
            X = street.sides[int(r.integers(2))].across(-1.4)
            scene.add_object(z, partial(big_side, kind=kind, X=X, Z=z))
    if scene.wants("train", st.p_train):
        z = _depth(r, max(zmin, 12.0), 30.0)
        if scene.allows("rail_track"):
            rail = scene.new_part("rail_track", scene.look("rail_track"))
            scene.polygon(scene.ground_quad(-80, 80, z - 0.8, z + 0.8), rail)
        X = float(r.uniform(-6, 6))
        scene.add_object(z, partial(train, X=X, Z=z))


def _place_people(scene: SceneCanvas, street: Street, zmin: float) -> None:
    """Pedestrians (most on the sidewalks), ridden two-wheelers at the road's edge, a parked bicycle or motorcycle."""
    r, st = scene.rng, scene.style
    for _ in range(int(r.poisson(2.0)) + int("person" in scene.force)):
        side = street.sides[int(r.integers(2))]
        if r.random() < 0.15:
            X = float(r.uniform(street.road_left, street.road_right))
        else:
            X = side.across(r.uniform(0.3, max(0.4, side.sidewalk - 0.3)))
        z = _depth(r, zmin, 45.0)
        scene.add_object(z, partial(person, X=X, Z=z))
    motors = []  # one flag per ridden two-wheeler: motorcycle or bicycle
    if "motorcycle" in scene.force:
        motors.append(True)
    if "rider" in scene.force or (not motors and r.random() < st.p_two_wheeler):
        motors.append(bool(r.random() < 0.3))
    for motor in motors:
        side = street.sides[int(r.integers(2))]
        far = 18.0 if scene.force & {"rider", "motorcycle"} else 35.0
        X, z = side.across(-r.uniform(0.6, 2.0)), _depth(r, zmin, far)
        scene.add_object(z, partial(two_wheeler, X=X, Z=z, motor=motor, ridden=True))
    if scene.wants("bicycle", 0.25) or scene.wants("motorcycle", 0.1):
        side = street.sides[int(r.integers(2))]
        X, z = side.across(r.uniform(0.3, max(0.4, side.sidewalk))), _depth(r, zmin, 18.0)
        motor = "motorcycle" in scene.force and "bicycle" not in scene.force
        scene.add_object(z, partial(two_wheeler, X=X, Z=z, motor=motor, ridden=False))


def _place_clutter(scene: SceneCanvas, street: Street, zmin: float) -> None:
    """Static objects on the sidewalks and a guard rail along a curb."""
    r = scene.rng
    for _ in range(int(r.poisson(0.8)) + int("static" in scene.force)):
        if not scene.allows("static"):
            break
        side = street.sides[int(r.integers(2))]
        X, z = side.across(r.uniform(0.3, max(0.4, side.sidewalk))), _depth(r, zmin, 35.0)
        scene.add_object(z, partial(static_object, X=X, Z=z))
    if scene.wants("guard_rail", 0.08):
        X, z0 = street.sides[int(r.integers(2))].across(0.15), float(r.uniform(0, 10))
        part = scene.new_part("guard_rail", scene.look("guard_rail"))
        # a side plane, queued at its far end so nearer objects cover it
        scene.add_object(
            z0 + 40.0, lambda s, X=X, z0=z0, p=part: s.polygon(s.side_quad(X, z0, z0 + 40.0, 0.3, 0.8), p)
        )
