"""The phantom patient in physical units: the drawn ranges, and one patient's body, pancreas, tumour and field of view.

The tables below are the ranges every case is drawn from, each documented beside it (millimetres of a real adult, HU,
voxels). The layout works in anatomy units of :data:`ANATOMY_UNIT_MM` (times the patient's build for most organ
positions and sizes). Nothing here knows the voxel grid: :mod:`synthcp3d.data.phantom_painting` paints the drawn
patient into a volume and :mod:`synthcp3d.data.phantom` assembles the case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.interpolate import make_interp_spline

__all__ = ["ANATOMY_UNIT_MM", "Build", "Tumour", "draw_build", "draw_tumour", "case_geometry", "tube_samples"]

# --- physical scale --------------------------------------------------------------------------------------------------
# The layout constants in the painting functions are in anatomy units; one unit is this many millimetres (times the
# patient's build, ``scale`` ~0.9-1.1, for most organ positions and sizes).
ANATOMY_UNIT_MM = 190.0

# Drawn ranges (uniform unless said otherwise), each standing for real adult anatomy or acquisition; the figures are
# approximate textbook radiology figures, not taken from one checked published series (issue #9 names them).
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
# PDAC is mostly 1.5-5 cm at diagnosis, median ~3 cm; issue #9 prescribes 1-5 cm log-uniform, whose median is
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

LOBULE_AMPLITUDE = 0.12  # lobulation, as a share of the local gland radius (1 sd)
LOBULE_REACH = 1.4  # the lobulated gland stays within 1.4 local radii of its centreline
TUMOUR_BUMPS = 0.15  # tumour outline irregularity, as a share of the semi-axes (1 sd)
TUMOUR_REACH = 1.3
_GLAND_WALL_GAP_MM = 10.0  # fat (and spleen, kidney) between the pancreatic tail and the abdominal wall
_LENGTH_ATTEMPTS = 20


def _arc_length(points: np.ndarray) -> float:
    """Length of a centreline sampled densely enough that the polyline is the curve."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


@dataclass
class Build:
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


def tube_samples(length: float, r_min: float, u0: float = 0.0, u1: float = 1.0) -> np.ndarray:
    """Centreline parameters in ``[u0, u1]`` about every half of the thinnest radius (a smooth swept tube)."""
    return np.linspace(u0, u1, int(np.ceil(1.5 * (u1 - u0) * length / (0.5 * r_min))) + 2)


def draw_build(rng: np.random.Generator) -> Build:
    """Draw the patient: body size and wall, spine position, and the pancreas (course, length, thickness)."""
    width_mm, ap_mm = float(rng.uniform(*ABDOMEN_WIDTH_MM)), float(rng.uniform(*ABDOMEN_AP_MM))
    ax, ay = width_mm / 2.0 / ANATOMY_UNIT_MM, ap_mm / 2.0 / ANATOMY_UNIT_MM
    fat = float(rng.uniform(*SUBCUTANEOUS_FAT_MM)) / ANATOMY_UNIT_MM
    muscle = float(rng.uniform(*WALL_MUSCLE_MM)) / ANATOMY_UNIT_MM
    scale = (ax + ay) / 1.5
    spine_dy = -(ay - fat) * 0.62
    cavity = (ax - fat - muscle, ay - fat - muscle)
    spline, radius, length_mm, head_mm, body_mm = _pancreas_centreline(rng, spine_dy, scale, cavity)
    samples = tube_samples(length_mm / ANATOMY_UNIT_MM, float(radius(1.0)))
    centres, radii = spline(samples), radius(samples)
    lo = (centres - LOBULE_REACH * radii[:, None]).min(0)
    hi = (centres + LOBULE_REACH * radii[:, None]).max(0)
    return Build(
        width_mm, ap_mm, ax, ay, fat, muscle, scale, spine_dy, 0.105 * scale, spline, radius, samples, lo, hi,
        length_mm, head_mm, body_mm,
    )  # fmt: skip


@dataclass
class Tumour:
    """A drawn tumour, in anatomy units in the volume frame (see :func:`draw_tumour`)."""

    position: float  # along the centreline, head (0) -> tail (1)
    centre: np.ndarray  # (3,) inside the gland
    diameter_mm: float  # nominal diameter = 2 x mean semi-axis
    semi: np.ndarray  # (3,) semi-axes
    contrast_hu: float  # HU below the gland


def draw_tumour(rng: np.random.Generator, centre_fn: Callable[[Any], np.ndarray], radius: Any) -> Tumour:
    """Position, size, shape and contrast of a tumour on the gland of centreline ``centre_fn`` and radius ``radius``
    (both functions of the centreline parameter ``u``, in the volume frame)."""
    t_c = float(rng.beta(1.3, 1.9))  # head more often than tail, as for ductal adenocarcinoma
    direction = rng.standard_normal(3)
    # the centre stays inside the gland (within half the local radius of the centreline); the mass may extend
    # beyond it, as PDAC does
    centre = centre_fn(t_c) + direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.5) * float(radius(t_c))
    diameter_mm = float(np.exp(rng.uniform(*np.log(TUMOUR_DIAMETER_MM))))
    factors = rng.uniform(*TUMOUR_AXIS_RATIO, size=3)
    semi = diameter_mm / 2.0 / ANATOMY_UNIT_MM * factors / factors.mean()  # mean semi-axis = diameter / 2
    if rng.random() < TUMOUR_ISODENSE_SHARE:
        contrast = float(rng.uniform(*TUMOUR_ISODENSE_CONTRAST_HU))
    else:
        contrast = float(rng.uniform(*TUMOUR_CONTRAST_HU))
    return Tumour(t_c, centre, diameter_mm, semi, contrast)


def case_geometry(rng: np.random.Generator, shape: tuple[int, int, int], build: Build):
    """Field of view, spacing, orientation and position of one case.

    Returns ``(affine, orientation, fov_mm, offset)``: ``offset`` is the volume centre in the patient frame
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
    return affine, orientation, fov, offset
