"""Assertions and utilities shared by several test files (``from helpers import ...``; ``tests/`` is on the path)."""

from __future__ import annotations

import hashlib
import locale
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from synthcp3d.alarm.bundle_predictor import REQUIRED, pancreas_config
from synthcp3d.data.volume_io import sitk_geometry_from_affine
from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.utils.arrays import to_numpy
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows import pancreas_model
from synthcp3d.workflows.trained import save_network


def assert_backward(module: torch.nn.Module, min_nonzero: float = 0.8) -> None:
    """Every parameter got a finite gradient, and at least ``min_nonzero`` of the parameter tensors a non-zero one
    (a bias right before a normalisation legitimately gets ~0)."""
    params = [p for p in module.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    assert all(torch.isfinite(p.grad).all() for p in params)
    nonzero = sum(bool(p.grad.abs().sum() > 0) for p in params)
    assert nonzero / len(params) >= min_nonzero


def relative_files(root: Path) -> list[Path]:
    """Every file below ``root``, as sorted paths relative to it."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


#: the marks of a test (or a parameter, ``pytest.param("cuda", marks=CUDA_MARKS)``) that needs CUDA
CUDA_MARKS = (pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


def needs_cuda(test: Callable) -> Callable:
    """Decorator of a test that needs CUDA: marked ``gpu`` (``pytest -m gpu`` selects it, as ``make gpu-check`` does)
    and skipped where no CUDA device is available."""
    for mark in reversed(CUDA_MARKS):
        test = mark(test)
    return test


#: the networks both tiny 2D studies share, each at its smallest valid size
_TINY_STREET = {
    "image_size": [64, 32],
    "segmenter_layers": [1, 1, 1, 1],
    "segmenter_channels": [8, 8, 16, 16],
    "generator_channels": [16, 8],
    "generator_spade_hidden": 8,
    "discriminator_num_d": 1,
    "discriminator_layers": 1,
    "discriminator_channels": 8,
    "mc_samples": 2,
    "progress": False,
    "checkpoint_every": 100,
}

_TWO_STEPS = {"iterations": 2, "batch_size": 2}

#: tiny Cityscapes study settings (`run_study(..., extra=...)`): every network at its smallest valid size, 2 iterations
TINY_CITYSCAPES = {
    "common": {
        **_TINY_STREET,
        "fcn_width": 8,
        "comparator_channels": [8, 8, 16, 16],
        "confidnet_hidden": [8],
        "vae_shape": [16, 32],
        "vae_channels": [4, 8],
        "vae_latent": 4,
    },
    **{stage: _TWO_STEPS for stage in ("train_segmenter", "crossval", "train_synthesizer", "train_comparator",
                                        "train_baselines")},
}


#: tiny pancreas bundle settings (`make_untrained_bundle(folder, TINY_PANCREAS)`): small but valid for every network
#: (AH-Net needs multiples of 32 here, the comparator's and the VAE's deepest instance norms more than one voxel)
_TINY_PANCREAS_NETWORKS = {
    "patch_size": [32, 32, 32],
    "vae_shape": [32, 32, 32],
    "ahnet_layers": [1, 1, 1, 1],
    "psp_block_num": 0,
    "generator_channels": [16, 8],
    "vae_latent": 8,
}
TINY_PANCREAS = {
    **_TINY_PANCREAS_NETWORKS,
    "spacing": [2.0, 2.0, 2.5],
    "roi_size": [64, 32, 32],
    "comparator_channels": [8, 16, 32, 64],
    "vae_channels": [4, 8, 16, 32],
    "settings_name": "tiny-untrained",
}


def write_dicom_series(
    array: Any,
    affine: np.ndarray,
    folder: str | os.PathLike,
    series_description: str = "synthcp phantom",
    series_uid: str | None = None,
) -> Path:
    """Write a 3D volume as a DICOM CT series (one int16 file per slice) with SimpleITK, atomically as a folder.

    For the tests of the DICOM input path. ``affine`` is RAS (nibabel convention); oblique directions are kept.
    DICOM derives the slice direction from the row/column cosines (right-handed), so a left-handed affine is written
    with its third axis reversed: the series then loads to the same world image with the slices in reverse order.

    Args:
        array: ``(X, Y, Z)`` intensities in HU (rounded to int16).
        affine: 4x4 RAS affine of ``array``.
        folder: destination folder; must not exist yet (written to a temporary folder, then renamed).
        series_description: DICOM SeriesDescription (0008,103E).
        series_uid: SeriesInstanceUID; default derived from the data, so equal inputs give equal files.

    Returns:
        the folder.
    """
    import SimpleITK as sitk  # optional: absent where the GPU check runs the CUDA tests

    folder = Path(folder)
    if folder.exists():
        raise SynthCPInputError(f"{folder}: already exists; write_dicom_series writes a new folder.")
    data = np.asarray(to_numpy(array), dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3:
        raise SynthCPInputError(f"expected a 3D array (X, Y, Z) for a DICOM series, got shape {data.shape}.")
    if np.linalg.det(affine[:3, :3]) < 0:
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, data.shape[2] - 1
        data, affine = data[:, :, ::-1], affine @ flip
    hu = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    if series_uid is None:
        digest = hashlib.sha1(hu.tobytes() + affine.tobytes()).hexdigest()
        series_uid = "1.2.826.0.1.3680043.2.1125." + str(int(digest[:24], 16))
    study_uid = series_uid + ".1"
    spacing, origin, direction = sitk_geometry_from_affine(affine)
    image = sitk.GetImageFromArray(np.transpose(hu, (2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    d = direction
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    # SimpleITK's DICOM (GDCM) writer switches the whole process to the C locale (ASCII text I/O from then on):
    # put the caller's locale back afterwards.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(hu.shape[2]):
            slc = image[:, :, k]
            tags = {
                "0008|0060": "CT",
                "0008|0008": "DERIVED\\SECONDARY\\AXIAL",
                "0008|103e": series_description,
                "0020|000d": study_uid,
                "0020|000e": series_uid,
                "0008|0018": f"{series_uid}.{k + 1}",
                "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0013": str(k + 1),
                "0018|0050": f"{spacing[2]:.10g}",
                "0028|1052": "0",
                "0028|1053": "1",
            }
            for tag, value in tags.items():
                slc.SetMetaData(tag, value)
            writer.SetFileName(str(tmp_dir / f"slice_{k + 1:04d}.dcm"))
            writer.Execute(slc)
        os.replace(tmp_dir, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
        if tmp_dir.exists():
            for f in tmp_dir.iterdir():
                f.unlink()
            tmp_dir.rmdir()
    return folder


def sklearn_saved_miou(records: list[dict], scores_dir: Path, ignore: int) -> float:
    """A 2D study's segmenter mIoU recomputed with scikit-learn: the predictions its evaluate stage saved
    (``<scores_dir>/<case>.npz``, key ``pred``) against the cached labels, pixels of every record pooled, ``ignore``
    pixels left out, the mean over the classes labelled or predicted."""
    from sklearn.metrics import jaccard_score

    from synthcp2d.studies.common import load_cached

    y, p = [], []
    for record in records:
        with np.load(scores_dir / f"{record['case'].replace('/', '_')}.npz") as data:
            p.append(data["pred"].ravel())
        y.append(load_cached(record["cache"])["label"].ravel())
    y, p = np.concatenate(y).astype(int), np.concatenate(p).astype(int)
    keep = y != ignore
    present = sorted(set(y[keep]) | set(p[keep]))
    return float(jaccard_score(y[keep], p[keep], labels=present, average=None).mean())


def make_untrained_bundle(out: str | os.PathLike, overrides: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Write an *untrained* trained-bundle folder: the pancreas bundle's networks with random weights, in its layout
    (for the alarm's tests and ``benchmarks/bench_alarm.py``: speed and memory do not depend on training).

    The networks and study settings come from ``bundles/pancreas_ct_synthcp/configs/common.yaml`` with
    ``overrides`` (e.g. the demo's small sizes); the VAE regressor is an identity map (predicted DSC = feature).
    Returns the folder (pass it as ``--bundle``).
    """
    out = Path(out)
    parser = pancreas_config(out, overrides)
    study = parser.get_parsed_content("study")
    torch.manual_seed(seed)
    study.models.mkdir(parents=True, exist_ok=True)
    pancreas_model.save_settings(study)
    for name in REQUIRED:
        factory = parser.get_parsed_content("comparator" if name == "comparator_synthcp" else name)
        save_network(study, name, pancreas_model.NETWORKS[name][1], factory().eval(), factory)
    n = study.num_classes
    feats = np.tile(np.linspace(0.0, 1.0, 5)[:, None], (1, n))
    regressor = LinearQualityRegressor(n, missing_feature_quality=0.0).fit(feats, feats)
    atomic_save_json(regressor.state_dict(), study.models / pancreas_model.REGRESSORS["vae_alarm"][0])
    return out


#: tiny StreetHazards study settings: the FCN-8 segmenter (the demo's UNet is larger), 2-3 iterations
TINY_STREETHAZARDS = {
    "common": {
        **_TINY_STREET,
        "segmenter_name": "fcn8",
        "autoencoder_channels": [8, 8],
        "autoencoder_strides": [2, 2],
        "crf_iterations": 1,
    },
    "train_segmenter": {"iterations": 3, "batch_size": 2},
    **{stage: _TWO_STEPS for stage in ("train_synthesizer", "train_autoencoder")},
}


#: a tiny pancreas study run (`run_study("pancreas", ..., extra={"common": TINY_PANCREAS_RUN})`): every stage in seconds
TINY_PANCREAS_RUN = {
    **_TINY_PANCREAS_NETWORKS,
    "device": "cpu",
    "num_folds": 2,
    "spacing": [5.0, 5.0, 5.0],  # the phantoms are real-size patients: a coarse grid keeps the volumes ~48^3
    "roi_size": [16, 16, 16],
    "discriminator_num_d": 1,
    "discriminator_layers": 1,
    "comparator_channels": [8, 8, 16, 16],
    "vae_channels": [4, 8, 8, 16],
    "mc_samples": 2,
    "iterations": 2,
    "progress": False,
}
