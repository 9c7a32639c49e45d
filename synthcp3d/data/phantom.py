"""Synthetic abdominal CT phantoms in Hounsfield units, written in exactly the MSD Task07_Pancreas layout.

Each case is an axial abdominal CT: body outline (subcutaneous fat, muscle wall, visceral fat), spine with discs,
canal and posterior arch, ribs, psoas, liver (sometimes a gallbladder), spleen, kidneys, stomach and bowel loops with
air, duodenum hugging the pancreatic head, aorta, IVC, splenic and superior mesenteric veins, and a pancreas: a
curved, lobulated tube from head to tail (label 1) 12-20 cm long with, in most cases, a hypo- or iso-attenuating
tumour (label 2) 1-5 cm across, of random contrast (clearly visible to nearly isodense) and random position along the
gland; some cases have no tumour, some a dilated pancreatic duct (a hypodense distractor labelled pancreas). Then a
smooth low-frequency texture, partial-volume blur and Gaussian noise of random level.

Geometry: the patient is real size. The anatomy is laid out in anatomy units of a fixed physical length
(``ANATOMY_UNIT_MM`` = 190 mm) times a per-patient build, and the physical ranges it is drawn from (abdomen
300-370 mm across, pancreas 12-20 cm long with a 2.5-3.5 cm head, tumours 1-5 cm) are the documented tables of
:mod:`synthcp3d.data.phantom_anatomy` (a gland too long for its abdomen is drawn again, so the lengths cluster at 13-16 cm, longer in roomier abdomens).
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

Modules: :mod:`~synthcp3d.data.phantom_anatomy` (the drawn ranges; one patient's body, pancreas, tumour and field of
view, in physical units), :mod:`~synthcp3d.data.phantom_painting` (the voxel grid, primitives and organs in HU) and
this one (a case: painting, texture, blur, noise; a data set in the MSD layout).
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
from tqdm.auto import tqdm

from synthcp3d.data.phantom_anatomy import (
    ANATOMY_UNIT_MM,
    BLUR_SIGMA_VOXELS,
    NOISE_HU,
    TEXTURE_CELL_MM,
    case_geometry,
    draw_build,
)
from synthcp3d.data.phantom_painting import Grid, Painter, lattice_field, paint_pancreas, paint_torso, paint_viscera
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


@dataclass
class PhantomCase:
    """One generated case: ``image`` int16 HU and ``label`` uint8, both ``(X, Y, Z)``; RAS ``affine``; drawn params."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


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
    build = draw_build(rng)
    affine, orientation, fov, offset = case_geometry(rng, shape, build)
    grid = Grid(affine, shape)
    paint = Painter(grid, np.full(shape, -1000.0, dtype=np.float32), np.zeros(shape, dtype=np.uint8))
    torso = paint_torso(rng, paint, build, offset)
    hu_vessel = paint_viscera(rng, paint, torso)
    params = paint_pancreas(rng, paint, torso, build, hu_vessel, tumour)

    image, label = paint.image, paint.label
    half = fov / 2.0 / ANATOMY_UNIT_MM
    texture = lattice_field(rng, -half, half, TEXTURE_CELL_MM / ANATOMY_UNIT_MM, grid.coords)
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
