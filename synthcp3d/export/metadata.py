"""``configs/metadata.json`` and ``docs/README.md`` of an exported pancreas bundle, and the offline metadata check.

``monai.bundle.verify_metadata(meta_file, filepath=SCHEMA)`` downloads the schema named in the metadata's
``schema`` field only when ``filepath`` does not exist. :data:`SCHEMA_PATH` is a JSON schema shipped with synthcp,
written from the fields the MONAI Bundle Specification documents (mandatory keys, tensor format specifiers,
optional keys), so :func:`verify_bundle_metadata` runs offline. It is not the official model-zoo schema: a bundle
that passes it has every documented field in the documented form, nothing more is claimed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import monai
import numpy
import torch
from monai.bundle import verify_metadata

from synthcp3d.workflows.pancreas_model import PancreasStudy

__all__ = ["SCHEMA_PATH", "OFFICIAL_SCHEMA_URL", "TABLE_ROWS", "bundle_metadata", "verify_bundle_metadata",
           "eval_metrics"]

SCHEMA_PATH = Path(__file__).resolve().with_name("metadata_schema.json")
#: the model zoo's schema (recorded in the ``schema`` field, as bundles do; not downloaded by synthcp)
OFFICIAL_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: the DSC alarm's methods (keys of its predicted DSC) -> their rows in the study's Table-2 report
TABLE_ROWS = {
    "synthcp": "SynthCP",
    "vae_alarm": "VAE alarm",
    "ensemble": "SynthCP + VAE alarm",
    "pairwise_dice": "Pairwise Dice (fold ensemble)",
    "synthcp_pairwise": "SynthCP + pairwise Dice",
}
_METRICS = ("MAE", "PC", "SC", "AURC")
#: packages the bundle needs at run time (distribution names), their installed versions recorded
_REQUIRED = ("synthcp", "pytorch-ignite", "nibabel", "scipy")


def verify_bundle_metadata(meta_file: str | os.PathLike, schema: str | os.PathLike = SCHEMA_PATH) -> None:
    """``monai.bundle.verify_metadata`` of ``meta_file`` against the local ``schema`` (never downloads: the file
    exists). Raises ``ValueError`` naming the failed field, as ``verify_metadata`` does."""
    schema = Path(schema)
    if not schema.is_file():  # verify_metadata would download into this path: refuse instead
        raise FileNotFoundError(f"metadata schema {schema} is missing (the check runs offline only)")
    with warnings.catch_warnings():  # "no hash value provided": about downloads, and nothing is downloaded here
        warnings.filterwarnings("ignore", message="No hash value provided")
        try:
            verify_metadata(meta_file=str(meta_file), filepath=str(schema))
        except ValueError as err:  # its message names the metadata's schema URL: say which schema was used
            raise ValueError(f"{meta_file}: {err} (checked offline against {schema}, not that URL)") from err


def _version(distribution: str) -> str | None:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return None


def eval_metrics(report: Mapping[str, Any] | None, methods: Sequence[str]) -> dict[str, float]:
    """The run's Table-2 numbers (``evaluate/report.json``: x100, on its test split) of the alarm's ``methods``:
    ``{"tumour_dsc_prediction_<method>_<metric>": value}`` for MAE, Pearson and Spearman correlation and AURC."""
    out: dict[str, float] = {}
    tables = (report or {}).get("tables", {})
    for cls in ("tumour", "pancreas"):
        for method in methods:
            row = tables.get(cls, {}).get(TABLE_ROWS[method], {})
            for metric in _METRICS:
                value = row.get(metric)
                if isinstance(value, (int, float)):
                    out[f"{cls}_dsc_prediction_{method}_{metric}"] = round(float(value), 2)
    return out


def bundle_metadata(
    base: Mapping[str, Any],
    study: PancreasStudy,
    segmenter: str,
    methods: Sequence[str],
    metrics: Mapping[str, float],
    provenance: Mapping[str, Any],
) -> dict[str, Any]:
    """The exported bundle's ``metadata.json``.

    Args:
        base: the study bundle's ``metadata.json`` (authors, copyright, data source, references, version).
        study: the run's settings (:func:`~synthcp3d.workflows.pancreas_model.load_study`).
        segmenter: the segmenter's name in words (e.g. ``"AH-Net"``).
        methods: the alarm methods the bundle predicts (keys of :data:`TABLE_ROWS`).
        metrics: :func:`eval_metrics` of the run.
        provenance: where the bundle came from (run folder, settings name, date, synthcp version, fold count).
    """
    version = str(base.get("version", "0.1.0"))
    window = [int(v) for v in study.sw_roi_size]
    names = {str(i): n for i, n in enumerate(study.class_names)}
    required = {name: v for name in _REQUIRED if (v := _version(name))}
    return {
        "schema": OFFICIAL_SCHEMA_URL,
        "version": version,
        "changelog": {version: f"exported by synthcp export from a trained run (settings '{study.settings_name}')"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        # only this one: MONAI 1.6 reads an optional_packages_version as (and in place of) required_packages_version
        "required_packages_version": required,
        "name": "Pancreas CT SynthCP (exported inference bundle)",
        "task": "Pancreas and pancreatic tumour segmentation of abdominal CT, with a predicted tumour and pancreas "
                "Dice (DSC) per case that flags segmentations needing a check",
        "description": (
            f"A 3D {segmenter} segments pancreas and tumour in abdominal CT (sliding window on the run's preprocessed "
            "grid; the label map is written on the input's own grid). The DSC alarm then predicts the Dice of that "
            "segmentation without ground truth: SynthCP (a 3D SPADE generator synthesizes a CT region from the "
            "predicted labels, a siamese comparator predicts the DSC from image, synthesis and labels), the VAE alarm "
            "(a mask VAE's loss regressed on DSC), their mean (the flagged value by default)"
            + (", and the pairwise Dice of the cross-validation fold segmenters" if "pairwise_dice" in methods else "")
            + ". Requires the synthcp package (it defines the networks and the alarm)."
        ),
        "authors": base.get("authors", "synthcp contributors"),
        "copyright": base.get("copyright", "Copyright (c) synthcp contributors"),
        "data_source": base.get("data_source", ""),
        "data_type": "nibabel",
        "image_classes": f"single channel CT in Hounsfield units; resampled to RAS {list(study.spacing)} mm and "
                         f"windowed to {list(study.hu_range)} HU scaled to [-1, 1] by the bundle",
        "label_classes": ", ".join(f"{i} {n}" for i, n in names.items()),
        "pred_classes": ", ".join(f"{i} {n}" for i, n in names.items()) + " (argmax of the network's 3 channels); "
                        "predicted DSC of pancreas and tumour in [0, 1] per method",
        "eval_metrics": dict(metrics),
        "intended_use": base.get("intended_use", "Research on segmentation failure detection; not for clinical use."),
        "references": list(base.get("references", [])),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                    "spatial_shape": window, "dtype": "float32", "value_range": [-1, 1], "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image", "format": "labels", "modality": "n/a", "num_channels": len(names),
                    "spatial_shape": window, "dtype": "float32", "value_range": [], "is_patch_data": True,
                    "channel_def": names,
                }
            },
        },
        "synthcp_export": dict(provenance),
    }
