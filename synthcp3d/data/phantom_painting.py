"""Painting one phantom into a CT volume: the voxel grid, primitives (ellipsoids, swept tubes, smooth random fields)
and the organs, in HU, with the pancreas (label 1) and tumour (label 2) label map.

The patient comes drawn from :mod:`synthcp3d.data.phantom_anatomy` (anatomy units); each organ is evaluated at the
voxels' world positions through :class:`Grid`, so the patient does not depend on the voxel size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthcp3d.data.phantom_anatomy import (
    ANATOMY_UNIT_MM,
    LOBULE_AMPLITUDE,
    LOBULE_CELL_MM,
    LOBULE_REACH,
    NO_TUMOUR_SHARE,
    TUMOUR_BUMPS,
    TUMOUR_REACH,
    Build,
    draw_tumour,
    tube_samples,
)
from synthcp3d.errors import SynthCPInputError

__all__ = ["Grid", "Painter", "Torso", "lattice_field", "paint_torso", "paint_viscera", "paint_pancreas"]


class Grid:
    """World coordinates of the voxel axes in anatomy units, for a diagonal (axis-aligned) affine.

    ``coords[a][i]`` is the RAS coordinate (``a`` = 0: right, 1: anterior, 2: superior) of index ``i`` along array
    axis ``a``, relative to the volume centre and divided by :data:`ANATOMY_UNIT_MM`.
    """

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
        centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
        self.coords = [
            ((affine[a, a] * np.arange(n) + affine[a, 3] - centre[a]) / ANATOMY_UNIT_MM).astype(np.float32)
            for a, n in enumerate(shape)
        ]

    def box(self, lo: Any, hi: Any) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose coordinates lie in ``[lo, hi]`` per axis (``None`` when empty)."""
        slices = []
        for c, low, high in zip(self.coords, lo, hi):
            idx = np.nonzero((c >= low) & (c <= high))[0]
            if idx.size == 0:
                return None
            slices.append(slice(int(idx[0]), int(idx[-1]) + 1))  # coordinates are monotonic along an axis
        return tuple(slices)  # type: ignore[return-value]

    def axes(self, box: tuple[slice, slice, slice] | None) -> list[np.ndarray] | None:
        """The 1-D coordinates of a box along each axis (``None`` for no box)."""
        return None if box is None else [c[b] for c, b in zip(self.coords, box)]

    def local(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(x, y, z)`` coordinates of a box: shapes ``(bx,1,1)``, ``(1,by,1)``, ``(1,1,bz)``."""
        return (
            self.coords[0][box[0]][:, None, None],
            self.coords[1][box[1]][None, :, None],
            self.coords[2][box[2]][None, None, :],
        )


class Painter:
    """Paints primitives into the HU image, later over earlier; carries the label map for the pancreas and tumour."""

    def __init__(self, grid: Grid, image: np.ndarray, label: np.ndarray) -> None:
        self.grid, self.image, self.label = grid, image, label

    def ellipsoid_r2(self, centre: Any, semi: Any, zrange: tuple[float, float] | None = None):
        """Squared normalised radius inside the ellipsoid's bounding box; ``zrange`` makes it an elliptic cylinder."""
        cx, cy, cz = centre
        ax, ay, az = semi
        if zrange is None:
            lo, hi = (cx - ax, cy - ay, cz - az), (cx + ax, cy + ay, cz + az)
        else:
            lo, hi = (cx - ax, cy - ay, zrange[0]), (cx + ax, cy + ay, zrange[1])
        box = self.grid.box(lo, hi)
        if box is None:
            return None, None
        x, y, z = self.grid.local(box)
        r2 = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
        if zrange is None:
            r2 = r2 + ((z - cz) / az) ** 2
        else:
            r2 = np.broadcast_to(r2, r2.shape[:2] + (z.shape[2],))
        return box, r2

    def fill(self, box: Any, mask: np.ndarray, value: float, within: np.ndarray | None = None) -> None:
        if box is None:
            return
        if within is not None:
            mask = mask & within[box]
        self.image[box][mask] = value

    def ellipsoid(self, centre: Any, semi: Any, value: float, zrange: Any = None, within: Any = None) -> None:
        box, r2 = self.ellipsoid_r2(centre, semi, zrange)
        if box is not None:
            self.fill(box, r2 <= 1.0, value, within)


def _bspline_weights(x: np.ndarray, start: float, cell: float, n: int) -> np.ndarray:
    """``(len(x), n)`` cubic B-spline weights of knots ``start + i * cell`` at positions ``x``."""
    a = np.abs((x.astype(np.float64)[:, None] - start) / cell - np.arange(n)[None, :])
    return np.where(a < 1.0, 2.0 / 3.0 - a * a + 0.5 * a**3, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


def lattice_field(rng: np.random.Generator, lo: Any, hi: Any, cell: Any, coords: Any) -> np.ndarray | None:
    """Smooth zero-mean, unit-variance random field on a physical lattice, sampled on an axis-aligned grid.

    Independent normal coefficients on a lattice of spacing ``cell`` covering the physical box ``[lo, hi]`` (anatomy
    units), interpolated by cubic B-splines (separably, one small matrix per axis) at the 1-D axis coordinates
    ``coords`` (which must lie in the box), and divided by the field's exact local standard deviation. The number of
    draws depends on the physical box only, never on the voxel grid: the same generator state gives the same field
    at any resolution. ``coords=None`` only makes the draws (nothing of the box is in the volume).
    """
    lo, hi, cell = (np.broadcast_to(np.asarray(v, dtype=np.float64), (3,)) for v in (lo, hi, cell))
    counts = [int(np.ceil(max(h - l, 0.0) / c)) + 5 for l, h, c in zip(lo, hi, cell)]  # 2 spare knots each side
    coef = rng.standard_normal(counts)
    if coords is None:
        return None
    w = [_bspline_weights(np.asarray(x).ravel(), l - 2 * c, c, n) for x, l, c, n in zip(coords, lo, cell, counts)]
    f = np.tensordot(w[0], coef, axes=(1, 0))  # (X, ny, nz)
    f = np.tensordot(f, w[1], axes=(1, 1))  # (X, nz, Y)
    f = np.tensordot(f, w[2], axes=(1, 1))  # (X, Y, Z)
    sd = [np.sqrt((wa * wa).sum(1)) for wa in w]
    return (f / (sd[0][:, None, None] * sd[1][None, :, None] * sd[2][None, None, :])).astype(np.float32)


def _swept_spheres_r(grid: Grid, centres: np.ndarray, radii: np.ndarray, reach: float = 1.0):
    """Box and ``min_t |p - c(t)| / r(t)`` over centreline samples (a tube with varying radius).

    Each sample updates only the voxels within ``reach`` of its own radius (``inf`` beyond every sample's reach).
    """
    centres, radii = centres.astype(np.float32), radii.astype(np.float32)
    box = grid.box((centres - reach * radii[:, None]).min(0), (centres + reach * radii[:, None]).max(0))
    if box is None:
        return None, None
    best = np.full(tuple(s.stop - s.start for s in box), np.inf, dtype=np.float32)
    for c, r in zip(centres, radii):
        sub = grid.box(c - reach * r, c + reach * r)
        if sub is None:
            continue
        x, y, z = grid.local(sub)
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box))
        d2 = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (r * r)
        np.minimum(best[local], d2, out=best[local])
    return box, np.sqrt(best)


@dataclass
class Torso:
    """Anchors of one patient's anatomy in the volume, in anatomy units (see :class:`Grid`)."""

    bx: float  # body centre, right (+) / left (-), relative to the volume centre
    by: float  # body centre, anterior (+) / posterior (-)
    scale: float  # patient build relative to the reference anatomy
    spine_y: float  # vertebral body centre, anterior-posterior
    spine_r: float  # vertebral body radius
    zp: float  # craniocaudal level of the pancreas
    cavity: np.ndarray  # (X, Y, Z) bool: inside the abdominal wall muscles
    hu_muscle: float


_ZALL = (-np.inf, np.inf)  # elliptic cylinders through the whole volume


def paint_torso(rng: np.random.Generator, paint: Painter, b: Build, offset: np.ndarray) -> Torso:
    """Body wall (subcutaneous fat, muscle, visceral fat), spine (discs, canal, arch), back muscles, psoas, ribs."""
    image = paint.image
    bx, by, zp = (float(v) for v in -offset)
    ax, ay, fat, muscle, scale = b.ax, b.ay, b.fat, b.muscle, b.scale
    hu_fat = rng.uniform(-115, -85)
    paint.ellipsoid((bx, by, 0), (ax, ay, 1), hu_fat, zrange=_ZALL)
    paint.ellipsoid((bx, by, 0), (ax - fat, ay - fat, 1), rng.uniform(40, 60), zrange=_ZALL)
    cavity = np.zeros(image.shape, dtype=bool)
    box, r2 = paint.ellipsoid_r2((bx, by, 0), (ax - fat - muscle, ay - fat - muscle, 1), zrange=_ZALL)
    if box is not None:
        cavity[box] = r2 <= 1.0
    image[cavity] = hu_fat + rng.uniform(5, 25)  # visceral fat, a little denser than subcutaneous

    spine_y, spine_r = by + b.spine_dy, b.spine_r
    hu_muscle = rng.uniform(40, 60)
    for side in (-1, 1):  # paraspinal muscles
        centre = (bx + side * 0.16 * scale, spine_y - 0.2 * scale, 0)
        paint.ellipsoid(centre, (0.12 * scale, 0.1 * scale, 1), hu_muscle, zrange=_ZALL)
    arch_y = spine_y - 0.17 * scale
    paint.ellipsoid((bx, arch_y, 0), (0.09 * scale, 0.08 * scale, 1), rng.uniform(500, 800), zrange=_ZALL)
    paint.ellipsoid(
        (bx, spine_y - 0.32 * scale, 0), (0.025 * scale, 0.1 * scale, 1), rng.uniform(400, 700), zrange=_ZALL
    )
    paint.ellipsoid((bx, arch_y, 0), (0.05 * scale, 0.045 * scale, 1), rng.uniform(5, 25), zrange=_ZALL)  # canal
    paint.ellipsoid((bx, spine_y, 0), (spine_r, spine_r * 0.9, 1), rng.uniform(600, 900), zrange=_ZALL)  # cortex
    paint.ellipsoid((bx, spine_y, 0), (spine_r * 0.8, spine_r * 0.72, 1), rng.uniform(180, 300), zrange=_ZALL)
    for k in range(-6, 7):  # intervertebral discs, one per vertebral level (+-6 levels cover any field of view)
        zc = zp + rng.uniform(-0.02, 0.02) + k * 0.15 * scale
        paint.ellipsoid((bx, spine_y, zc), (spine_r * 0.95, spine_r * 0.85, 0.018 * scale), rng.uniform(70, 100))
    for side in (-1, 1):  # psoas, growing caudally
        for k, zc in enumerate(np.arange(zp - 0.05, zp - 0.85, -0.08)):
            r = min(0.1, 0.03 + 0.012 * k) * scale
            paint.ellipsoid((bx + side * (spine_r + r * 0.8), spine_y + 0.02, zc), (r, r * 0.9, 0.06), hu_muscle)
    rib_a, rib_b = ax - fat - muscle * 0.5, ay - fat - muscle * 0.5
    for side in (-1, 1):  # ribs: short bony arcs at the periphery, above the pancreas, in slabs
        for angle in np.linspace(-2.4, 0.4, 8):
            phase = rng.uniform(0, 1)
            cx, cy = bx + side * rib_a * np.cos(angle), by + rib_b * np.sin(angle)
            for zc in np.arange(zp - 0.15 + phase * 0.12, zp + 0.6, 0.12 * scale):
                paint.ellipsoid((cx, cy, zc), (0.028, 0.028, 0.03 * scale), rng.uniform(500, 900))
    return Torso(bx, by, scale, spine_y, spine_r, zp, cavity, hu_muscle)


def paint_viscera(rng: np.random.Generator, paint: Painter, t: Torso) -> float:
    """Bowel loops, liver (+ gallbladder), spleen, kidneys, stomach, aorta and IVC; returns the vessel HU."""
    bx, by, s, zp, cavity = t.bx, t.by, t.scale, t.zp, t.cavity
    for _ in range(int(rng.integers(5, 11))):  # bowel first: the solid organs painted later are never hollowed out
        c = (bx + rng.uniform(-0.5, 0.5) * s, by + rng.uniform(0.05, 0.45), zp - rng.uniform(0.05, 0.6))
        r = rng.uniform(0.05, 0.1) * s
        paint.ellipsoid(c, (r, r, r * 1.3), rng.uniform(40, 60), within=cavity)
        content = -1000.0 if rng.random() < 0.4 else rng.uniform(0, 40)
        paint.ellipsoid(c, (r * 0.7, r * 0.7, r * 0.9), content, within=cavity)
    hu_liver = rng.uniform(90, 120)
    paint.ellipsoid((bx + 0.42 * s, by - 0.02, zp + 0.3), (0.34 * s, 0.4 * s, 0.42), hu_liver, within=cavity)
    if rng.random() < 0.6:  # gallbladder
        paint.ellipsoid((bx + 0.28 * s, by + 0.22, zp + 0.02), (0.06, 0.08, 0.1), rng.uniform(0, 20), within=cavity)
    hu_vessel = rng.uniform(140, 230)
    spleen = ((bx - 0.55 * s, t.spine_y + 0.05, zp + 0.22), (0.12 * s, 0.2 * s, 0.2))
    paint.ellipsoid(*spleen, hu_liver + rng.uniform(0, 20), within=cavity)
    for side, dz in ((1, -0.13), (-1, -0.05)):  # kidneys (cortex, medulla), the right one lower
        centre = (bx + side * 0.34 * s, t.spine_y + 0.03, zp + dz)
        paint.ellipsoid(centre, (0.09 * s, 0.13 * s, 0.2), rng.uniform(160, 200), within=cavity)
        paint.ellipsoid(centre, (0.05 * s, 0.07 * s, 0.12), rng.uniform(110, 140), within=cavity)
    st_c, st_s = (bx - 0.3 * s, by + 0.28, zp + 0.15), (0.2 * s, 0.15 * s, 0.22)  # stomach: wall, fluid, gas
    paint.ellipsoid(st_c, st_s, rng.uniform(45, 65), within=cavity)
    box, r2 = paint.ellipsoid_r2(st_c, tuple(v * 0.82 for v in st_s))
    if box is not None:
        _, y, _ = paint.grid.local(box)
        air_level = st_c[1] + rng.uniform(0.0, 0.1)  # supine: gas rises anteriorly
        inside = r2 <= 1.0
        paint.fill(box, inside, rng.uniform(5, 25), within=cavity)
        paint.fill(box, inside & np.broadcast_to(y > air_level, inside.shape), -1000.0, within=cavity)
    front = t.spine_y + t.spine_r
    paint.ellipsoid((bx - 0.05 * s, front + 0.06 * s, 0), (0.05 * s, 0.05 * s, 1), hu_vessel, zrange=_ZALL)  # aorta
    ivc_hu = hu_vessel * rng.uniform(0.6, 0.9)
    paint.ellipsoid((bx + 0.12 * s, front + 0.05 * s, 0), (0.06 * s, 0.045 * s, 1), ivc_hu, zrange=_ZALL)
    return hu_vessel


def paint_pancreas(
    rng: np.random.Generator, paint: Painter, t: Torso, b: Build, hu_vessel: float, tumour: bool | None
) -> dict[str, Any]:
    """SMV, duodenum, splenic vein, the gland (label 1), the tumour (label 2) and a dilated duct; returns params."""
    image, label, grid, s, cavity = paint.image, paint.label, paint.grid, t.scale, t.cavity
    shift = np.array([t.bx, t.by, t.zp])
    centre_fn: Callable[[Any], np.ndarray] = lambda u: b.spline(u) + shift  # noqa: E731
    length = b.length_mm / ANATOMY_UNIT_MM
    neck = centre_fn(0.3)
    smv = ((neck[0], neck[1] - 0.07 * s, 0), (0.028 * s, 0.028 * s, 1))
    paint.ellipsoid(*smv, hu_vessel * 0.8, zrange=(-np.inf, neck[2] + 0.05))  # superior mesenteric vein
    head = centre_fn(0.0)
    r_duo = 0.055 * s
    for dz in np.linspace(-0.12, 0.1, 6):  # duodenal C-loop beside the head: a hypodense neighbour
        c = (head[0] + float(b.radius(0.0)) + r_duo * 0.9, head[1] - 0.02, head[2] + dz)
        paint.ellipsoid(c, (r_duo, r_duo, 0.06), rng.uniform(45, 60), within=cavity)
        content = -1000.0 if rng.random() < 0.3 else rng.uniform(5, 30)
        paint.ellipsoid(c, (r_duo * 0.6, r_duo * 0.6, 0.05), content, within=cavity)
    r_vein = 0.022 * s
    u_vein = tube_samples(length, r_vein, 0.42, 1.0)
    vein_centres = centre_fn(u_vein) + np.array([0.0, -0.05 * s, 0.01])
    box, dist = _swept_spheres_r(grid, vein_centres, np.full(u_vein.shape, r_vein))  # splenic vein
    if box is not None:
        paint.fill(box, dist <= 1.0, hu_vessel * 0.85, within=cavity)

    hu_pancreas = rng.uniform(85, 120)
    box, dist = _swept_spheres_r(grid, centre_fn(b.samples), b.radius(b.samples), reach=LOBULE_REACH)
    if box is None:
        raise SynthCPInputError(f"shape {image.shape} is too small to hold the pancreas phantom.")
    lobules = lattice_field(rng, b.lo + shift, b.hi + shift, LOBULE_CELL_MM / ANATOMY_UNIT_MM, grid.axes(box))
    gland = (dist + LOBULE_AMPLITUDE * lobules <= 1.0) & cavity[box]
    image[box][gland] = hu_pancreas
    label[box][gland] = 1

    params: dict[str, Any] = {
        "pancreas_hu": round(hu_pancreas, 1),
        "pancreas_length_mm": round(b.length_mm, 1),
        "pancreas_head_diameter_mm": round(b.head_mm, 1),
        "pancreas_body_thickness_mm": round(b.body_mm, 1),
    }
    duct = rng.random() < 0.1
    if (rng.random() >= NO_TUMOUR_SHARE) if tumour is None else tumour:
        drawn = draw_tumour(rng, centre_fn, b.radius)
        centre, semi = drawn.centre, drawn.semi
        reach = TUMOUR_REACH * semi
        tb, r2 = paint.ellipsoid_r2(tuple(centre), tuple(reach))  # bumpy outline: up to 1.3 semi-axes out
        bumps = lattice_field(rng, centre - reach, centre + reach, 0.5 * semi.mean(), grid.axes(tb))
        mask = np.zeros(image.shape, dtype=bool)
        if tb is not None:
            mask[tb] = np.sqrt(r2) * TUMOUR_REACH + TUMOUR_BUMPS * bumps <= 1.0
        mask &= cavity
        if not mask.any():  # at coarse voxels a small tumour still occupies the voxel nearest its centre
            mask[tuple(int(np.argmin(np.abs(c - v))) for c, v in zip(grid.coords, centre))] = True
        image[mask] = hu_pancreas - drawn.contrast_hu
        label[mask] = 2
        duct = duct or (drawn.position < 0.4 and rng.random() < 0.3)  # upstream duct dilatation behind a head tumour
        params.update(
            tumour_diameter_mm=round(drawn.diameter_mm, 2),
            tumour_contrast_hu=round(drawn.contrast_hu, 1),
            tumour_position=round(drawn.position, 3),
        )
    if duct:  # dilated main duct: hypodense, but pancreas (label 1) where it is not tumour
        r_duct = rng.uniform(0.01, 0.02) * s  # ~4-8 mm across
        u_duct = tube_samples(length, r_duct, 8 / 47, 1.0)
        box, dist = _swept_spheres_r(grid, centre_fn(u_duct), np.full(u_duct.shape, r_duct))
        if box is not None:
            paint.fill(box, (dist <= 1.0) & (label[box] == 1), rng.uniform(5, 25))
    params["dilated_duct"] = bool(duct)
    return params
