"""Synthetic abdominal CT phantoms in Hounsfield units, written in exactly the MSD Task07_Pancreas layout.

Each case is an axial abdominal CT: body outline (subcutaneous fat, muscle wall, visceral fat), spine with discs,
canal and posterior arch, ribs, psoas, liver (sometimes a gallbladder), spleen, kidneys, stomach and bowel loops with
air, duodenum hugging the pancreatic head, aorta, IVC, splenic and superior mesenteric veins, and a pancreas: a
curved, lobulated tube from head to tail (label 1) 12-20 cm long with, in most cases, a hypo- or iso-attenuating
tumour (label 2) 1-5 cm across, of random contrast (clearly visible to nearly isodense) and random position along the
gland; some cases have no tumour, some a dilated pancreatic duct (a hypodense distractor labelled pancreas). Then a
smooth low-frequency texture, partial-volume blur and Gaussian noise of random level.

Geometry: the patient is real size. The anatomy is laid out in anatomy units of a fixed physical length
(:data:`ANATOMY_UNIT_MM` = 190 mm) times a per-patient build, and the physical ranges it is drawn from (abdomen
300-370 mm across, pancreas 12-20 cm long with a 2.5-3.5 cm head, tumours 1-5 cm) are the module-level tables below
(a gland too long for its abdomen is drawn again, so the lengths cluster at 13-16 cm, longer in roomier abdomens).
Each case is a targeted reconstruction around the pancreas: a reduced physical field of view, 224-256 mm in-plane
(square) by 110-130 mm craniocaudally, centred on the gland (its bounding box, jittered by a few mm in-plane and up to
10 mm craniocaudally, never so far that the gland leaves the volume). The body outline is therefore cut at the
field-of-view edge, laterally always. The voxel spacing is the field of view divided by the ``shape`` (rounded to
0.001 mm; a non-square in-plane shape gives non-square pixels over the same square field of view), so the default
``(128, 128, 48)`` gives 1.75-2.0 mm pixels and 2.3-2.7 mm slices, and a small shape gives
the same patient at coarser voxels: every random draw that shapes the anatomy (including the lobulation, tumour
outline and texture, which are smooth random fields on physical lattices) is independent of the shape; only the
voxel noise is drawn per voxel. The anatomy is evaluated at each voxel's RAS world position through the case's
affine, which is RAS-ordered for some cases and LPS-ordered (first two array axes reversed) for others, as in real
collections, with the volume centre at a random world position.

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
from typing import Any, Callable

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
PHANTOM_VERSION = 2
HU_RANGE = (-1024, 3071)
DEFAULT_SHAPE = (128, 128, 48)
_SPLIT_CODE = {"training": 0, "test": 1}

# --- physical scale --------------------------------------------------------------------------------------------------
# The layout constants in the painting functions are in anatomy units; one unit is this many millimetres (times the
# patient's build, ``scale`` ~0.9-1.1, for most organ positions and sizes).
ANATOMY_UNIT_MM = 190.0

# Drawn ranges (uniform unless said otherwise), each standing for real adult anatomy or acquisition; the figures are
# common radiology figures (DESIGN.md), not from a specific study.
ABDOMEN_WIDTH_MM = (300.0, 370.0)  # transverse (left-right) body diameter at the pancreas: adult abdomen 300-400 mm
ABDOMEN_AP_MM = (220.0, 265.0)  # anteroposterior body diameter, about two thirds to three quarters of the width
SUBCUTANEOUS_FAT_MM = (8.0, 25.0)  # subcutaneous fat thickness, lean to obese
WALL_MUSCLE_MM = (6.0, 9.5)  # abdominal wall muscle thickness
# head-to-tail length of the gland (centreline arc length): 12-20 cm; a length that would push the tail into the
# abdominal wall is drawn again (median ~145 mm, longest glands in the widest abdomens)
PANCREAS_LENGTH_MM = (120.0, 200.0)
PANCREAS_HEAD_DIAMETER_MM = (25.0, 35.0)  # pancreatic head ~2.5-3.5 cm
PANCREAS_BODY_THICKNESS_MM = (15.0, 25.0)  # body and tail ~1.5-2.5 cm thick (the tail no thicker than the body)
LOBULE_CELL_MM = 10.0  # spacing of the random lattice behind the gland's lobulated outline
# PDAC is 1.5-5 cm at diagnosis, median ~3 cm (DESIGN.md); issue #9 prescribes 1-5 cm log-uniform, whose median is
# ~22 mm: more small tumours than in a clinical series, on purpose (the hard cases).
TUMOUR_DIAMETER_MM = (10.0, 50.0)  # log-uniform; nominal diameter = 2 x mean semi-axis
TUMOUR_AXIS_RATIO = (0.8, 1.25)  # semi-axis factors: slightly ellipsoidal masses
TUMOUR_ISODENSE_SHARE = 0.15  # share of nearly isodense tumours (iso-attenuating PDAC)
TUMOUR_ISODENSE_CONTRAST_HU = (3.0, 12.0)  # HU below the gland, nearly isodense
TUMOUR_CONTRAST_HU = (12.0, 90.0)  # HU below the gland, hypo-attenuating (the usual PDAC appearance)
NO_TUMOUR_SHARE = 0.12  # cases without tumour
# MSD Task07 CTs are 512x512 at 0.6-1.0 mm (307-512 mm, the whole abdomen), slices mostly 2.5 mm; here a targeted
# reconstruction around the pancreas instead, so that a modest array shape still has CT-like voxels.
FOV_IN_PLANE_MM = (224.0, 256.0)  # square in-plane field of view
FOV_CRANIOCAUDAL_MM = (110.0, 130.0)  # craniocaudal coverage: the upper abdomen around the pancreas
FOV_JITTER_MM = (5.0, 5.0, 10.0)  # field-of-view centre about the gland's bounding-box centre (x, y, z)
TEXTURE_CELL_MM = 40.0  # spacing of the low-frequency texture lattice (soft-tissue inhomogeneity, beam hardening)
BLUR_SIGMA_VOXELS = (0.3, 0.6)  # point spread / slice profile: sharper or smoother reconstruction kernels
NOISE_HU = (5.0, 22.0)  # per-voxel Gaussian noise: low-dose to standard-dose protocols

_LOBULE_AMPLITUDE = 0.12  # lobulation, as a share of the local gland radius (1 sd)
_LOBULE_REACH = 1.4  # the lobulated gland stays within 1.4 local radii of its centreline
_TUMOUR_BUMPS = 0.15  # tumour outline irregularity, as a share of the semi-axes (1 sd)
_TUMOUR_REACH = 1.3
_GLAND_WALL_GAP_MM = 10.0  # fat (and spleen, kidney) between the pancreatic tail and the abdominal wall
_LENGTH_ATTEMPTS = 20


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


def _bspline_weights(x: np.ndarray, start: float, cell: float, n: int) -> np.ndarray:
    """``(len(x), n)`` cubic B-spline weights of knots ``start + i * cell`` at positions ``x``."""
    a = np.abs((x.astype(np.float64)[:, None] - start) / cell - np.arange(n)[None, :])
    return np.where(a < 1.0, 2.0 / 3.0 - a * a + 0.5 * a**3, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


def _lattice_field(rng: np.random.Generator, lo: Any, hi: Any, cell: Any, coords: Any) -> np.ndarray | None:
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


def _arc_length(points: np.ndarray) -> float:
    """Length of a centreline sampled densely enough that the polyline is the curve."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


@dataclass
class _Build:
    """The patient drawn before the field of view: body and pancreas, in anatomy units, in the patient frame.

    The patient frame has the body centre at ``x = y = 0`` and the pancreas level at ``z = 0``.
    """

    width_mm: float  # abdomen, left-right
    ap_mm: float  # abdomen, anterior-posterior
    ax: float  # body ellipse semi-axes
    ay: float
    fat: float  # subcutaneous fat thickness
    muscle: float  # abdominal wall muscle thickness
    scale: float  # patient build relative to the reference anatomy
    spine_dy: float  # vertebral body centre relative to the body centre (posterior, < 0)
    spine_r: float  # vertebral body radius
    spline: Any  # pancreas centreline, head (u = 0) -> neck (0.3) -> body (0.6) -> tail (1)
    radius: Any  # gland radius along the centreline
    samples: np.ndarray  # centreline parameters dense enough for a smooth tube
    lo: np.ndarray  # the (lobulated) gland's bounding box
    hi: np.ndarray
    length_mm: float  # centreline arc length
    head_mm: float  # head diameter
    body_mm: float  # body thickness


def _pancreas_centreline(rng: np.random.Generator, spine_dy: float, scale: float, cavity: tuple[float, float]):
    """Head -> neck -> body -> tail centreline (patient frame) and radii, with per-patient jitter, length, thickness.

    The control points give the gland's course (head right of the midline beside the duodenum, neck in front of the
    SMV, body over the aorta, tail towards the splenic hilum); their in-plane offsets from the neck are then
    stretched so that the centreline's arc length is the drawn :data:`PANCREAS_LENGTH_MM`. A length that would push
    the tail into the abdominal wall of this patient (``cavity``: the semi-axes inside the wall muscles) is drawn
    again, so long glands go with roomy abdomens.
    """
    jit = lambda s: rng.uniform(-s, s)  # noqa: E731
    points = np.array(
        [
            [0.17 + jit(0.03), spine_dy + 0.27 + jit(0.03), -0.11 + jit(0.03)],  # head, right of midline
            [0.03 + jit(0.02), spine_dy + 0.34 + jit(0.03), -0.03 + jit(0.02)],  # neck, in front of the SMV
            [-0.17 + jit(0.03), spine_dy + 0.31 + jit(0.03), 0.04 + jit(0.03)],  # body, over the aorta
            [-0.40 + jit(0.04), spine_dy + 0.17 + jit(0.04), 0.11 + jit(0.04)],  # tail, at the splenic hilum
        ]
    )
    points[:, :2] *= scale
    head_mm = float(rng.uniform(*PANCREAS_HEAD_DIAMETER_MM))
    body_mm = float(rng.uniform(*PANCREAS_BODY_THICKNESS_MM))
    tail_mm = float(rng.uniform(PANCREAS_BODY_THICKNESS_MM[0], body_mm))
    radii = np.array([head_mm, 0.9 * body_mm, body_mm, tail_mm]) / 2.0 / ANATOMY_UNIT_MM  # neck a little thinner
    t_ctrl = np.array([0.0, 0.3, 0.6, 1.0])
    radius = make_interp_spline(t_ctrl, radii, k=1)
    u_fine = np.linspace(0.0, 1.0, 1025)
    r_fine = radius(u_fine)
    neck = points[1].copy()
    room = np.array(cavity) - _GLAND_WALL_GAP_MM / ANATOMY_UNIT_MM  # the gland's surface stays this far inside
    for attempt in range(_LENGTH_ATTEMPTS):
        # the shortest length on the last attempt (not needed in 10,000 drawn builds; a gland that still met the wall
        # would be clipped by the cavity)
        last = attempt == _LENGTH_ATTEMPTS - 1
        length_mm = PANCREAS_LENGTH_MM[0] if last else float(rng.uniform(*PANCREAS_LENGTH_MM))
        target, stretch = length_mm / ANATOMY_UNIT_MM, np.ones(3)
        for _ in range(30):  # in-plane stretch about the neck to the drawn length (near-linear: converges in a few)
            spline = make_interp_spline(t_ctrl, neck + (points - neck) * stretch, k=2)
            centres = spline(u_fine)
            length = _arc_length(centres)
            if abs(length - target) < 1e-7:
                break
            stretch[:2] *= target / length
        semi = room[None, :] - r_fine[:, None]
        if (((centres[:, :2] / semi) ** 2).sum(1) <= 1.0).all():
            break
    return spline, radius, length * ANATOMY_UNIT_MM, head_mm, body_mm


def _tube_samples(length: float, r_min: float, u0: float = 0.0, u1: float = 1.0) -> np.ndarray:
    """Centreline parameters in ``[u0, u1]`` about every half of the thinnest radius (a smooth swept tube)."""
    return np.linspace(u0, u1, int(np.ceil(1.5 * (u1 - u0) * length / (0.5 * r_min))) + 2)


def _draw_build(rng: np.random.Generator) -> _Build:
    """Draw the patient: body size and wall, spine position, and the pancreas (course, length, thickness)."""
    width_mm, ap_mm = float(rng.uniform(*ABDOMEN_WIDTH_MM)), float(rng.uniform(*ABDOMEN_AP_MM))
    ax, ay = width_mm / 2.0 / ANATOMY_UNIT_MM, ap_mm / 2.0 / ANATOMY_UNIT_MM
    fat = float(rng.uniform(*SUBCUTANEOUS_FAT_MM)) / ANATOMY_UNIT_MM
    muscle = float(rng.uniform(*WALL_MUSCLE_MM)) / ANATOMY_UNIT_MM
    scale = (ax + ay) / 1.5
    spine_dy = -(ay - fat) * 0.62
    cavity = (ax - fat - muscle, ay - fat - muscle)
    spline, radius, length_mm, head_mm, body_mm = _pancreas_centreline(rng, spine_dy, scale, cavity)
    samples = _tube_samples(length_mm / ANATOMY_UNIT_MM, float(radius(1.0)))
    centres, radii = spline(samples), radius(samples)
    lo = (centres - _LOBULE_REACH * radii[:, None]).min(0)
    hi = (centres + _LOBULE_REACH * radii[:, None]).max(0)
    return _Build(
        width_mm, ap_mm, ax, ay, fat, muscle, scale, spine_dy, 0.105 * scale, spline, radius, samples, lo, hi,
        length_mm, head_mm, body_mm,
    )  # fmt: skip


def _swept_spheres_r(grid: _Grid, centres: np.ndarray, radii: np.ndarray, reach: float = 1.0):
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
class _Torso:
    """Anchors of one patient's anatomy in the volume, in anatomy units (see :class:`_Grid`)."""

    bx: float  # body centre, right (+) / left (-), relative to the volume centre
    by: float  # body centre, anterior (+) / posterior (-)
    scale: float  # patient build relative to the reference anatomy
    spine_y: float  # vertebral body centre, anterior-posterior
    spine_r: float  # vertebral body radius
    zp: float  # craniocaudal level of the pancreas
    cavity: np.ndarray  # (X, Y, Z) bool: inside the abdominal wall muscles
    hu_muscle: float


_ZALL = (-np.inf, np.inf)  # elliptic cylinders through the whole volume


def _case_geometry(rng: np.random.Generator, shape: tuple[int, int, int], build: _Build):
    """Field of view, spacing, orientation and position of one case.

    Returns ``(affine, orientation, grid, fov_mm, offset)``: ``offset`` is the volume centre in the patient frame
    (anatomy units), on the gland's bounding-box centre plus a jitter that keeps the whole gland inside.
    """
    orientation = "RAS" if rng.random() < 0.5 else "LPS"
    fov_xy = float(rng.uniform(*FOV_IN_PLANE_MM))
    fov = np.array([fov_xy, fov_xy, float(rng.uniform(*FOV_CRANIOCAUDAL_MM))])
    extent = (build.hi - build.lo) * ANATOMY_UNIT_MM
    room = np.maximum(0.0, (fov - extent) / 2.0)
    jitter = rng.uniform(-1.0, 1.0, size=3) * np.minimum(FOV_JITTER_MM, room)
    offset = (build.lo + build.hi) / 2.0 + jitter / ANATOMY_UNIT_MM
    spacing = np.round(fov / np.asarray(shape), 3)
    sign = np.array([1.0, 1.0, 1.0]) if orientation == "RAS" else np.array([-1.0, -1.0, 1.0])
    affine = np.diag([*(sign * spacing), 1.0])
    world_centre = np.array([rng.uniform(-20, 20), rng.uniform(-60, 0), rng.uniform(-700, -300)]).round(2)
    affine[:3, 3] = world_centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine, orientation, _Grid(affine, shape), fov, offset


def _paint_torso(rng: np.random.Generator, paint: _Painter, b: _Build, offset: np.ndarray) -> _Torso:
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
    rng: np.random.Generator, paint: _Painter, t: _Torso, b: _Build, hu_vessel: float, tumour: bool | None
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
    u_vein = _tube_samples(length, r_vein, 0.42, 1.0)
    vein_centres = centre_fn(u_vein) + np.array([0.0, -0.05 * s, 0.01])
    box, dist = _swept_spheres_r(grid, vein_centres, np.full(u_vein.shape, r_vein))  # splenic vein
    if box is not None:
        paint.fill(box, dist <= 1.0, hu_vessel * 0.85, within=cavity)

    hu_pancreas = rng.uniform(85, 120)
    box, dist = _swept_spheres_r(grid, centre_fn(b.samples), b.radius(b.samples), reach=_LOBULE_REACH)
    if box is None:
        raise SynthCPInputError(f"shape {image.shape} is too small to hold the pancreas phantom.")
    lobules = _lattice_field(rng, b.lo + shift, b.hi + shift, LOBULE_CELL_MM / ANATOMY_UNIT_MM, grid.axes(box))
    gland = (dist + _LOBULE_AMPLITUDE * lobules <= 1.0) & cavity[box]
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
        t_c = float(rng.beta(1.3, 1.9))  # head more often than tail, as for ductal adenocarcinoma
        direction = rng.standard_normal(3)
        # the centre stays inside the gland (within half the local radius of the centreline); the mass may extend
        # beyond it, as PDAC does
        centre = centre_fn(t_c) + direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5) * float(b.radius(t_c))
        diameter_mm = float(np.exp(rng.uniform(*np.log(TUMOUR_DIAMETER_MM))))
        factors = rng.uniform(*TUMOUR_AXIS_RATIO, size=3)
        semi = diameter_mm / 2.0 / ANATOMY_UNIT_MM * factors / factors.mean()  # mean semi-axis = diameter / 2
        if rng.random() < TUMOUR_ISODENSE_SHARE:
            contrast = float(rng.uniform(*TUMOUR_ISODENSE_CONTRAST_HU))
        else:
            contrast = float(rng.uniform(*TUMOUR_CONTRAST_HU))
        reach = _TUMOUR_REACH * semi
        tb, r2 = paint.ellipsoid_r2(tuple(centre), tuple(reach))  # bumpy outline: up to 1.3 semi-axes out
        bumps = _lattice_field(rng, centre - reach, centre + reach, 0.5 * semi.mean(), grid.axes(tb))
        mask = np.zeros(image.shape, dtype=bool)
        if tb is not None:
            mask[tb] = np.sqrt(r2) * _TUMOUR_REACH + _TUMOUR_BUMPS * bumps <= 1.0
        mask &= cavity
        if not mask.any():  # at coarse voxels a small tumour still occupies the voxel nearest its centre
            mask[tuple(int(np.argmin(np.abs(c - v))) for c, v in zip(grid.coords, centre))] = True
        image[mask] = hu_pancreas - contrast
        label[mask] = 2
        duct = duct or (t_c < 0.4 and rng.random() < 0.3)  # upstream duct dilatation behind a head tumour
        params.update(
            tumour_diameter_mm=round(diameter_mm, 2),
            tumour_contrast_hu=round(contrast, 1),
            tumour_position=round(t_c, 3),
        )
    if duct:  # dilated main duct: hypodense, but pancreas (label 1) where it is not tumour
        r_duct = rng.uniform(0.01, 0.02) * s  # ~4-8 mm across
        u_duct = _tube_samples(length, r_duct, 8 / 47, 1.0)
        box, dist = _swept_spheres_r(grid, centre_fn(u_duct), np.full(u_duct.shape, r_duct))
        if box is not None:
            paint.fill(box, (dist <= 1.0) & (label[box] == 1), rng.uniform(5, 25))
    params["dilated_duct"] = bool(duct)
    return params


def make_pancreas_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = DEFAULT_SHAPE, tumour: bool | None = None
) -> PhantomCase:
    """Generate one phantom case.

    The patient (anatomy, tumour, field of view) depends on ``rng`` only; ``shape`` sets the voxel grid over the
    field of view (spacing = field of view / shape), so the same generator state at two shapes gives the same patient
    at two resolutions (only the voxel noise differs).

    Args:
        rng: the case's random generator (everything about the case is drawn from it).
        shape: ``(X, Y, Z)`` voxels; in-plane first, slices last.
        tumour: force a tumour (``True``) or none (``False``); ``None`` draws (no tumour in ~12% of cases).

    Returns:
        image int16 HU ``(X, Y, Z)``, label uint8 ``(X, Y, Z)`` (0 background, 1 pancreas, 2 cancer), the RAS
        affine, and the drawn parameters (field of view, spacing, orientation, noise, abdomen and pancreas size,
        tumour size/contrast/position, voxel counts). A tumour case has at least one tumour voxel: at coarse voxels a
        tumour smaller than a voxel keeps the voxel nearest its centre.
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    build = _draw_build(rng)
    affine, orientation, grid, fov, offset = _case_geometry(rng, shape, build)
    paint = _Painter(grid, np.full(shape, -1000.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8))
    torso = _paint_torso(rng, paint, build, offset)
    hu_vessel = _paint_viscera(rng, paint, torso)
    params = _paint_pancreas(rng, paint, torso, build, hu_vessel, tumour)

    image, label = paint.image, paint.label
    half = fov / 2.0 / ANATOMY_UNIT_MM
    texture = _lattice_field(rng, -half, half, TEXTURE_CELL_MM / ANATOMY_UNIT_MM, grid.coords)
    image += (image > -500) * texture * rng.uniform(4, 12)  # low-frequency texture
    # point spread / slice profile of about half a voxel (sharper or smoother reconstruction kernels)
    image = ndimage.gaussian_filter(image, float(rng.uniform(*BLUR_SIGMA_VOXELS)), mode="nearest")
    noise_hu = float(rng.uniform(*NOISE_HU))
    image += rng.standard_normal(shape, dtype=np.float32) * noise_hu
    hu = np.clip(np.rint(image), *HU_RANGE).astype(np.int16)
    spacing = [float(v) for v in np.abs(np.diag(affine)[:3])]
    params = {
        "shape": list(shape),
        "spacing": spacing,
        "fov_mm": [round(v * n, 1) for v, n in zip(spacing, shape)],
        "orientation": orientation,
        "noise_hu": round(noise_hu, 2),
        "abdomen_width_mm": round(build.width_mm, 1),
        "abdomen_ap_mm": round(build.ap_mm, 1),
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
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    progress: bool = True,
) -> Path:
    """Write a phantom data set as ``out_dir/Task07_Pancreas/{dataset.json, imagesTr, labelsTr, imagesTs}``.

    Files are named like MSD's (``pancreas_001.nii.gz``; training 1..cases, test cases numbered after them), images
    int16 HU and labels uint8 {0, 1, 2}; ``dataset.json`` has MSD's keys and is written last, so an interrupted run
    leaves no ``dataset.json``. An earlier phantom data set in the same place is replaced (a folder this function
    did not write is refused, never touched). ``synthcp_phantom.json`` beside it records each case's drawn
    parameters (field of view, spacing, orientation, abdomen and pancreas size, tumour size/contrast/position,
    noise) for analysis.

    Args:
        out_dir: parent folder; ``Task07_Pancreas`` is created inside it.
        cases: number of labelled training cases (>= 1).
        seed: non-negative integer; equal seeds give byte-identical files.
        test_cases: number of unlabelled test cases (``imagesTs``).
        shape: ``(X, Y, Z)`` voxels per case (at least 24 x 24 x 8); the spacing is the field of view over it, so
            the default ``(128, 128, 48)`` gives 1.75-2.0 mm pixels and 2.3-2.7 mm slices.
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

    def span(key: str, index: int | None = None) -> list[float] | None:
        values = [r[key] if index is None else r[key][index] for r in records if key in r]
        return [float(min(values)), float(max(values))] if values else None

    return {
        "folder": str(Path(task_dir)),
        "training_cases": len(train),
        "test_cases": len(records) - len(train),
        "shape": records[0]["shape"],
        "in_plane_spacing_mm": [float(spacing[:, 0].min()), float(spacing[:, 0].max())],
        "slice_spacing_mm": [float(spacing[:, 2].min()), float(spacing[:, 2].max())],
        "in_plane_fov_mm": span("fov_mm", 0),
        "craniocaudal_fov_mm": span("fov_mm", 2),
        "pancreas_length_mm": span("pancreas_length_mm"),
        "tumour_diameter_mm": span("tumour_diameter_mm"),
        "orientations": {o: sum(r["orientation"] == o for r in records) for o in ("RAS", "LPS")},
        "training_cases_with_tumour": sum(r["tumour"] for r in train),
    }
