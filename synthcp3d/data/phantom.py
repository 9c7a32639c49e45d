"""Synthetic abdominal CT phantoms in Hounsfield units, written in exactly the MSD Task07_Pancreas layout.

Each case is an axial abdominal CT: body outline (subcutaneous fat, muscle wall, visceral fat), spine with discs,
canal and posterior arch, ribs, psoas, liver (sometimes a gallbladder), spleen, kidneys, stomach and bowel loops with
air, duodenum hugging the pancreatic head, aorta, IVC, splenic and superior mesenteric veins, and a pancreas: a
curved, lobulated tube from head to tail (label 1) with, in most cases, a hypodense tumour (label 2) of random size
(from a single voxel to a few centimetres), random contrast (clearly visible to nearly isodense) and random position
along the gland; some cases have no tumour, some a dilated pancreatic duct (a hypodense distractor labelled
pancreas). Then a smooth low-frequency texture, partial-volume blur and Gaussian noise of random level.

Geometry: the anatomy is laid out in units of the in-plane half field of view, the way a scanner's reconstruction
field of view is chosen to fit the patient, so the in-plane spacing (0.6-1.0 mm) scales the patient rather than its
voxel footprint; the slice spacing (1.0-2.5 mm) is physical, so thick-slice cases cover more of the abdomen in
fewer slices. The anatomy is evaluated at each voxel's RAS world position through the case's affine, which is
RAS-ordered for some cases and LPS-ordered (first two array axes reversed) for others, as in real collections.

Every case draws from its own generator ``default_rng([seed, split, index])``: regeneration with the same seed gives
byte-identical files (``save_like`` gzips with mtime 0 and no file name), and case ``k`` does not depend on how
many cases are made.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from tqdm.auto import tqdm

from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json

__all__ = ["PhantomCase", "make_pancreas_case", "make_pancreas_dataset", "MSD_PANCREAS_LABELS", "PHANTOM_MANIFEST"]

logger = logging.getLogger(__name__)

MSD_PANCREAS_LABELS = {"0": "background", "1": "pancreas", "2": "cancer"}
TASK_NAME = "Task07_Pancreas"
PHANTOM_MANIFEST = "synthcp_phantom.json"  # per-case generation parameters; also marks a folder as ours
PHANTOM_VERSION = 1
HU_RANGE = (-1024, 3071)
IN_PLANE_SPACING = (0.6, 1.0)
SLICE_SPACINGS = (1.0, 1.25, 1.5, 2.0, 2.5)  # the usual reconstruction increments
NO_TUMOUR_SHARE = 0.12
_SPLIT_CODE = {"training": 0, "test": 1}


@dataclass
class PhantomCase:
    """One generated case: ``image`` int16 HU and ``label`` uint8, both ``(X, Y, Z)``; RAS ``affine``; drawn params."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


class _Grid:
    """World coordinates of the voxel axes in anatomy units, for a diagonal (axis-aligned) affine.

    ``coords[a][i]`` is the RAS coordinate (``a`` = 0: right, 1: anterior, 2: superior) of index ``i`` along array
    axis ``a``, relative to the volume centre and divided by the in-plane half field of view (mm).
    """

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int], half_fov_mm: float) -> None:
        centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
        self.coords = [
            ((affine[a, a] * np.arange(n) + affine[a, 3] - centre[a]) / half_fov_mm).astype(np.float32)
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

    def local(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable ``(x, y, z)`` coordinates of a box: shapes ``(bx,1,1)``, ``(1,by,1)``, ``(1,1,bz)``."""
        return (
            self.coords[0][box[0]][:, None, None],
            self.coords[1][box[1]][None, :, None],
            self.coords[2][box[2]][None, None, :],
        )


class _Painter:
    """Paints primitives into the HU image, later over earlier; carries the label map for the pancreas and tumour."""

    def __init__(self, grid: _Grid, image: np.ndarray, label: np.ndarray) -> None:
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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-scale low-frequency noise: a coarse random grid, linearly upsampled, then blurred.

    (Cubic ``ndimage.zoom`` is 15x slower here; linear upsampling followed by a Gaussian is as smooth for a texture.)
    """
    coarse = rng.standard_normal(cells).astype(np.float32)
    up = ndimage.zoom(coarse, [s / c for s, c in zip(shape, cells)], order=1, mode="nearest", grid_mode=True)
    up = up[tuple(slice(0, s) for s in shape)]
    up = ndimage.gaussian_filter(up, [sigma * s / c / 2 for s, c in zip(shape, cells)], mode="nearest")
    return (up - up.mean()) / (up.std() + 1e-6)


def _pancreas_centreline(rng: np.random.Generator, spine_y: float, zp: float, scale: float):
    """Head -> neck -> body -> tail control points (RAS units) and radii, with per-patient jitter."""
    jit = lambda s: rng.uniform(-s, s)  # noqa: E731
    points = np.array(
        [
            [0.17 + jit(0.03), spine_y + 0.27 + jit(0.03), zp - 0.11 + jit(0.03)],  # head, right of midline
            [0.03 + jit(0.02), spine_y + 0.34 + jit(0.03), zp - 0.03 + jit(0.02)],  # neck, in front of the SMV
            [-0.17 + jit(0.03), spine_y + 0.31 + jit(0.03), zp + 0.04 + jit(0.03)],  # body, over the aorta
            [-0.40 + jit(0.04), spine_y + 0.17 + jit(0.04), zp + 0.11 + jit(0.04)],  # tail, at the splenic hilum
        ]
    )
    points[:, :2] *= scale
    radii = np.array([0.085, 0.05, 0.055, 0.045]) * scale * rng.uniform(0.8, 1.2)
    t_ctrl = np.array([0.0, 0.3, 0.6, 1.0])
    spline = make_interp_spline(t_ctrl, points, k=2)
    radius = make_interp_spline(t_ctrl, radii, k=1)
    return spline, radius


def _swept_spheres_r(grid: _Grid, spline: Any, radius: Any, t: np.ndarray, margin: float = 0.0):
    """Box and ``min_t |p - c(t)| / r(t)`` over a densely sampled centreline (a tube with varying radius)."""
    centres = spline(t).astype(np.float32)
    radii = (radius(t) + margin).astype(np.float32)
    lo = (centres - radii[:, None]).min(0)
    hi = (centres + radii[:, None]).max(0)
    box = grid.box(lo, hi)
    if box is None:
        return None, None
    x, y, z = grid.local(box)
    best = np.full((x.shape[0], y.shape[1], z.shape[2]), np.inf, dtype=np.float32)
    for (cx, cy, cz), r in zip(centres, radii):
        d2 = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (r * r)
        np.minimum(best, d2, out=best)
    return box, np.sqrt(best)


@dataclass
class _Torso:
    """Anchors of one patient's anatomy, in anatomy units (see :class:`_Grid`)."""

    bx: float  # body centre, right (+) / left (-)
    by: float  # body centre, anterior (+) / posterior (-)
    scale: float  # patient build relative to the reference anatomy
    spine_y: float  # vertebral body centre, anterior-posterior
    spine_r: float  # vertebral body radius
    zp: float  # craniocaudal level of the pancreas
    cavity: np.ndarray  # (X, Y, Z) bool: inside the abdominal wall muscles
    hu_muscle: float


_ZALL = (-np.inf, np.inf)  # elliptic cylinders through the whole volume


def _case_geometry(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, str, _Grid, float]:
    """Spacing, orientation and position of one case: ``(affine, orientation, grid, half_fov_mm)``."""
    sxy = float(np.round(rng.uniform(*IN_PLANE_SPACING), 4))
    sz = float(rng.choice(SLICE_SPACINGS))
    orientation = "RAS" if rng.random() < 0.5 else "LPS"
    sign = np.array([1.0, 1.0, 1.0]) if orientation == "RAS" else np.array([-1.0, -1.0, 1.0])
    affine = np.diag([*(sign * [sxy, sxy, sz]), 1.0])
    world_centre = np.array([rng.uniform(-20, 20), rng.uniform(-60, 0), rng.uniform(-700, -300)]).round(2)
    affine[:3, 3] = world_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    half_fov = shape[0] * sxy / 2.0
    return affine, orientation, _Grid(affine, shape, half_fov), half_fov


def _paint_torso(rng: np.random.Generator, paint: _Painter) -> _Torso:
    """Body wall (subcutaneous fat, muscle, visceral fat), spine (discs, canal, arch), back muscles, psoas, ribs."""
    image, grid = paint.image, paint.grid
    hz = float(np.abs(grid.coords[2]).max())  # half the covered craniocaudal extent
    bx, by = rng.uniform(-0.04, 0.04), rng.uniform(-0.06, 0.02)
    ax, ay = rng.uniform(0.80, 0.92), rng.uniform(0.58, 0.70)
    fat, muscle = rng.uniform(0.04, 0.13), rng.uniform(0.03, 0.05)
    scale = (ax + ay) / 1.5
    hu_fat = rng.uniform(-115, -85)
    paint.ellipsoid((bx, by, 0), (ax, ay, 1), hu_fat, zrange=_ZALL)
    paint.ellipsoid((bx, by, 0), (ax - fat, ay - fat, 1), rng.uniform(40, 60), zrange=_ZALL)
    cavity = np.zeros(image.shape, dtype=bool)
    box, r2 = paint.ellipsoid_r2((bx, by, 0), (ax - fat - muscle, ay - fat - muscle, 1), zrange=_ZALL)
    cavity[box] = r2 <= 1.0
    image[cavity] = hu_fat + rng.uniform(5, 25)  # visceral fat, a little denser than subcutaneous

    spine_y, spine_r = by - (ay - fat) * 0.62, 0.105 * scale
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
    zp = float(rng.uniform(-1, 1) * max(0.0, hz - 0.3) * 0.5)  # pancreas level; keeps the gland in the volume
    for k in range(-12, 13):  # intervertebral discs, one per vertebral level
        zc = zp + rng.uniform(-0.02, 0.02) + k * 0.15 * scale
        paint.ellipsoid((bx, spine_y, zc), (spine_r * 0.95, spine_r * 0.85, 0.018 * scale), rng.uniform(70, 100))
    for side in (-1, 1):  # psoas, growing caudally
        for k, zc in enumerate(np.arange(zp - 0.05, -hz - 0.2, -0.08)):
            r = min(0.1, 0.03 + 0.012 * k) * scale
            paint.ellipsoid((bx + side * (spine_r + r * 0.8), spine_y + 0.02, zc), (r, r * 0.9, 0.06), hu_muscle)
    rib_a, rib_b = ax - fat - muscle * 0.5, ay - fat - muscle * 0.5
    for side in (-1, 1):  # ribs: short bony arcs at the periphery, above the pancreas, in slabs
        for angle in np.linspace(-2.4, 0.4, 8):
            phase = rng.uniform(0, 1)
            cx, cy = bx + side * rib_a * np.cos(angle), by + rib_b * np.sin(angle)
            for zc in np.arange(zp - 0.15 + phase * 0.12, hz + 0.1, 0.12 * scale):
                paint.ellipsoid((cx, cy, zc), (0.028, 0.028, 0.03 * scale), rng.uniform(500, 900))
    return _Torso(bx, by, scale, spine_y, spine_r, zp, cavity, hu_muscle)


def _paint_viscera(rng: np.random.Generator, paint: _Painter, t: _Torso) -> float:
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


def _paint_pancreas(
    rng: np.random.Generator, paint: _Painter, t: _Torso, hu_vessel: float, tumour: bool | None, half_fov: float
) -> dict[str, Any]:
    """SMV, duodenum, splenic vein, the gland (label 1), the tumour (label 2) and a dilated duct; returns params."""
    image, label, grid, s, cavity = paint.image, paint.label, paint.grid, t.scale, t.cavity
    spline, radius = _pancreas_centreline(rng, t.spine_y - t.by, t.zp, s)
    body_shift = np.array([t.bx, t.by, 0.0], dtype=np.float32)
    centre_fn = lambda u: spline(u) + body_shift  # noqa: E731
    t_dense = np.linspace(0.0, 1.0, 48)
    neck = centre_fn(0.3)
    smv = ((neck[0], neck[1] - 0.07 * s, 0), (0.028 * s, 0.028 * s, 1))
    paint.ellipsoid(*smv, hu_vessel * 0.8, zrange=(-np.inf, neck[2] + 0.05))  # superior mesenteric vein
    head = centre_fn(0.0)
    r_duo = 0.055 * s
    for dz in np.linspace(-0.12, 0.1, 6):  # duodenal C-loop beside the head: a hypodense neighbour
        c = (head[0] + radius(0.0) + r_duo * 0.9, head[1] - 0.02, head[2] + dz)
        paint.ellipsoid(c, (r_duo, r_duo, 0.06), rng.uniform(45, 60), within=cavity)
        content = -1000.0 if rng.random() < 0.3 else rng.uniform(5, 30)
        paint.ellipsoid(c, (r_duo * 0.6, r_duo * 0.6, 0.05), content, within=cavity)
    vein = lambda u: centre_fn(u) + np.array([0.0, -0.05 * s, 0.01], dtype=np.float32)  # noqa: E731
    box, dist = _swept_spheres_r(grid, vein, lambda u: np.full_like(u, 0.022 * s), t_dense[20:])  # splenic vein
    if box is not None:
        paint.fill(box, dist <= 1.0, hu_vessel * 0.85, within=cavity)

    hu_pancreas = rng.uniform(85, 120)
    box, dist = _swept_spheres_r(grid, centre_fn, radius, t_dense, margin=0.02)
    if box is None:
        raise SynthCPInputError(f"shape {image.shape} is too small to hold the pancreas phantom.")
    lobules = _smooth_field(rng, dist.shape, tuple(max(2, n // 3) for n in dist.shape), 1.0)
    gland = (dist + 0.12 * lobules <= 1.0) & cavity[box]
    image[box][gland] = hu_pancreas
    label[box][gland] = 1

    params: dict[str, Any] = {"pancreas_hu": round(hu_pancreas, 1)}
    duct = rng.random() < 0.1
    if (rng.random() >= NO_TUMOUR_SHARE) if tumour is None else tumour:
        t_c = float(rng.beta(1.3, 1.9))  # head more often than tail, as for ductal adenocarcinoma
        direction = rng.standard_normal(3)
        centre = centre_fn(t_c) + direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5) * float(radius(t_c))
        # a quarter small (down to a single voxel), the rest 1-4 cm masses next to a ~3 cm pancreatic head
        small = rng.random() < 0.25
        rho = float(np.exp(rng.uniform(np.log(0.012), np.log(0.035))) if small else rng.uniform(0.035, 0.11)) * s
        semi = rho * rng.uniform(0.8, 1.25, size=3)
        contrast = float(rng.uniform(3, 12) if rng.random() < 0.15 else rng.uniform(12, 90))  # 15% near-isodense
        tb, r2 = paint.ellipsoid_r2(tuple(centre), tuple(semi))
        mask = np.zeros(image.shape, dtype=bool)
        if tb is not None:
            bumps = _smooth_field(rng, r2.shape, tuple(max(2, n // 2) for n in r2.shape), 0.8)
            mask[tb] = np.sqrt(r2) + 0.15 * bumps <= 1.0
        mask &= cavity
        if not mask.any():  # a sub-voxel tumour still occupies the voxel nearest its centre
            mask[tuple(int(np.argmin(np.abs(c - v))) for c, v in zip(grid.coords, centre))] = True
        image[mask] = hu_pancreas - contrast
        label[mask] = 2
        duct = duct or (t_c < 0.4 and rng.random() < 0.3)  # upstream duct dilatation behind a head tumour
        params.update(
            tumour_radius_mm=round(rho * half_fov, 2),
            tumour_contrast_hu=round(contrast, 1),
            tumour_position=round(t_c, 3),
        )
    if duct:  # dilated main duct: hypodense, but pancreas (label 1) where it is not tumour
        r_duct = rng.uniform(0.01, 0.02) * s
        box, dist = _swept_spheres_r(grid, centre_fn, lambda u: np.full_like(u, r_duct), t_dense[8:])
        if box is not None:
            paint.fill(box, (dist <= 1.0) & (label[box] == 1), rng.uniform(5, 25))
    params["dilated_duct"] = bool(duct)
    return params


def make_pancreas_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (96, 96, 48), tumour: bool | None = None
) -> PhantomCase:
    """Generate one phantom case.

    Args:
        rng: the case's random generator (everything about the case is drawn from it).
        shape: ``(X, Y, Z)`` voxels; in-plane first, slices last.
        tumour: force a tumour (``True``) or none (``False``); ``None`` draws (no tumour in ~12% of cases).

    Returns:
        image int16 HU ``(X, Y, Z)``, label uint8 ``(X, Y, Z)`` (0 background, 1 pancreas, 2 cancer), the RAS
        affine, and the drawn parameters (spacing, orientation, noise, tumour size/contrast/position, voxel counts).
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    affine, orientation, grid, half_fov = _case_geometry(rng, shape)
    paint = _Painter(grid, np.full(shape, -1000.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8))
    torso = _paint_torso(rng, paint)
    hu_vessel = _paint_viscera(rng, paint, torso)
    params = _paint_pancreas(rng, paint, torso, hu_vessel, tumour, half_fov)

    image, label = paint.image, paint.label
    image += (image > -500) * _smooth_field(rng, shape, (6, 6, 4), 1.0) * rng.uniform(4, 12)  # low-frequency texture
    # point spread / slice profile of about half a voxel (sharper or smoother reconstruction kernels)
    image = ndimage.gaussian_filter(image, float(rng.uniform(0.3, 0.6)), mode="nearest")
    noise_hu = float(rng.uniform(5, 22))
    image += rng.standard_normal(shape, dtype=np.float32) * noise_hu
    hu = np.clip(np.rint(image), *HU_RANGE).astype(np.int16)
    spacing = [float(v) for v in np.abs(np.diag(affine)[:3])]
    params = {
        "shape": list(shape),
        "spacing": spacing,
        "orientation": orientation,
        "noise_hu": round(noise_hu, 2),
        "tumour": bool((label == 2).any()),
        "tumour_voxels": int((label == 2).sum()),
        "pancreas_voxels": int((label == 1).sum()),
        **params,
    }
    return PhantomCase(image=hu, label=label, affine=affine, params=params)


def _case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def _prepare_task_dir(out_dir: Path, seed: int) -> Path:
    """Create the task folder; an earlier phantom data set there is replaced, any other non-empty folder refused.

    The manifest is written first (with no cases) and stays while the folder is rewritten, so a run interrupted
    half-way leaves a folder that a rerun still recognises as the generator's own; ``dataset.json``, written last,
    is what marks the data set complete.
    """
    task_dir = out_dir / TASK_NAME
    if task_dir.exists() and any(task_dir.iterdir()):
        if not (task_dir / PHANTOM_MANIFEST).is_file():
            raise SynthCPInputError(
                f"{task_dir} already exists and was not written by the phantom generator (no {PHANTOM_MANIFEST}); "
                "refusing to overwrite it: choose another output folder."
            )
        (task_dir / "dataset.json").unlink(missing_ok=True)
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            shutil.rmtree(task_dir / sub, ignore_errors=True)
    task_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(task_dir, seed, [], complete=False)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task_dir / sub).mkdir(exist_ok=True)
    return task_dir


def _write_manifest(task_dir: Path, seed: int, records: list[dict[str, Any]], complete: bool = True) -> None:
    manifest = {"generator": "synthcp3d.data.phantom", "version": PHANTOM_VERSION, "seed": seed, "cases": records}
    if not complete:
        manifest["complete"] = False
    atomic_save_json(manifest, task_dir / PHANTOM_MANIFEST)


def make_pancreas_dataset(
    out_dir: str | os.PathLike,
    cases: int = 10,
    seed: int = 0,
    test_cases: int = 2,
    shape: tuple[int, int, int] = (96, 96, 48),
    progress: bool = True,
) -> Path:
    """Write a phantom data set as ``out_dir/Task07_Pancreas/{dataset.json, imagesTr, labelsTr, imagesTs}``.

    Files are named like MSD's (``pancreas_001.nii.gz``; training 1..cases, test cases numbered after them), images
    int16 HU and labels uint8 {0, 1, 2}; ``dataset.json`` has MSD's keys and is written last, so an interrupted run
    leaves no ``dataset.json``. An earlier phantom data set in the same place is replaced (a folder this function
    did not write is refused, never touched). ``synthcp_phantom.json`` beside it records each case's drawn
    parameters (spacing, orientation, tumour size/contrast/position, noise) for analysis.

    Args:
        out_dir: parent folder; ``Task07_Pancreas`` is created inside it.
        cases: number of labelled training cases (>= 1).
        seed: non-negative integer; equal seeds give byte-identical files.
        test_cases: number of unlabelled test cases (``imagesTs``).
        shape: ``(X, Y, Z)`` voxels per case.
        progress: show a tqdm progress bar.

    Returns:
        the ``Task07_Pancreas`` folder.
    """
    if int(cases) < 1 or int(test_cases) < 0:
        raise SynthCPInputError(f"cases must be >= 1 and test_cases >= 0, got cases={cases}, test_cases={test_cases}.")
    if int(seed) < 0:
        raise SynthCPInputError(f"seed must be a non-negative integer, got {seed}.")
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape[:2]) < 24 or shape[2] < 8:
        raise SynthCPInputError(f"shape must be (X, Y, Z) with X, Y >= 24 and Z >= 8 voxels, got {shape}.")
    task_dir = _prepare_task_dir(Path(out_dir), int(seed))
    jobs = [("training", i) for i in range(int(cases))] + [("test", i) for i in range(int(test_cases))]
    training: list[dict[str, str]] = []
    test: list[str] = []
    records: list[dict[str, Any]] = []
    for split, index in tqdm(jobs, desc="pancreas phantoms", unit="case", disable=not progress):
        number = index + 1 if split == "training" else int(cases) + index + 1
        case_id = f"pancreas_{number:03d}"
        case = make_pancreas_case(_case_rng(int(seed), split, index), shape)
        if split == "training":
            save_like(case.image, case.affine, task_dir / "imagesTr" / f"{case_id}.nii.gz")
            save_like(case.label, case.affine, task_dir / "labelsTr" / f"{case_id}.nii.gz")
            training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        else:
            save_like(case.image, case.affine, task_dir / "imagesTs" / f"{case_id}.nii.gz")
            test.append(f"./imagesTs/{case_id}.nii.gz")
        records.append({"case": case_id, "split": split, **case.params})
    _write_manifest(task_dir, int(seed), records)
    dataset = {
        "name": "Pancreas",
        "description": "Synthetic abdominal CT phantoms: pancreas and cancer segmentation (synthcp)",
        "reference": "synthcp3d.data.phantom (synthetic; not patient data)",
        "licence": "CC-BY-SA 4.0",
        "release": f"synthcp phantom {PHANTOM_VERSION}, seed {int(seed)}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(MSD_PANCREAS_LABELS),
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    atomic_save_json(dataset, task_dir / "dataset.json")
    logger.info("wrote %d training and %d test phantom cases to %s", len(training), len(test), task_dir)
    return task_dir


def phantom_summary(task_dir: str | os.PathLike) -> dict[str, Any]:
    """Counts and ranges of a phantom data set from its ``synthcp_phantom.json`` (for the command line)."""
    path = Path(task_dir) / PHANTOM_MANIFEST
    records = json.loads(path.read_text())["cases"]
    train = [r for r in records if r["split"] == "training"]
    spacing = np.array([r["spacing"] for r in records])
    return {
        "folder": str(Path(task_dir)),
        "training_cases": len(train),
        "test_cases": len(records) - len(train),
        "shape": records[0]["shape"],
        "in_plane_spacing_mm": [float(spacing[:, 0].min()), float(spacing[:, 0].max())],
        "slice_spacing_mm": [float(spacing[:, 2].min()), float(spacing[:, 2].max())],
        "orientations": {o: sum(r["orientation"] == o for r in records) for o in ("RAS", "LPS")},
        "training_cases_with_tumour": sum(r["tumour"] for r in train),
    }
