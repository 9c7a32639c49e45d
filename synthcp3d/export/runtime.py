"""What an exported bundle's ``configs/inference.yaml`` calls at run time (by ``_target_`` / ``$`` expressions).

Everything else in that config is stock MONAI (loading, preprocessing, sliding-window inferer, evaluator, checkpoint
loader, inversion, writer). Three pieces are synthcp's:

- :func:`config_bundle_root`: the bundle folder, found from the config file the running ``monai.bundle`` workflow
  read (so ``python -m monai.bundle run --config_file DIR/configs/inference.yaml`` works from any directory);
- :func:`list_volumes`: the NIfTI files of the input folder, refused with one line when there is none;
- :class:`PredictDSCd`: the DSC alarm's predicted DSC of each case's segmentation (the alarm's public API, loaded
  from the bundle's own ``models/``), written as the alarm's own report files.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import MapTransform

from synthcp3d.alarm.inputs import case_name
from synthcp3d.alarm.report import AlarmReport, flag_case, write_summary
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json

__all__ = ["config_bundle_root", "list_volumes", "PredictDSCd", "PREDICTED_DSC_CSV", "PREDICTED_DSC_JSON"]

PREDICTED_DSC_CSV = "predicted_dsc.csv"
PREDICTED_DSC_JSON = "predicted_dsc.json"
_NIFTI = (".nii", ".nii.gz")


def config_bundle_root(default: str | os.PathLike = ".") -> str:
    """The folder of the bundle whose config the running ``monai.bundle`` workflow read, as an absolute path.

    MONAI's ``ConfigWorkflow`` keeps the folder of its (first) config file as ``config_root_path`` and treats its
    parent as the bundle root when that folder is ``configs/`` (it puts that root on ``sys.path`` by the same rule);
    this returns the same folder. Outside a workflow (e.g. a ``ConfigParser`` used directly) it returns
    ``default``. A ``--bundle_root`` given on the command line replaces the config's expression, so it always wins.
    """
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigWorkflow):
            root = Path(owner.config_root_path)
            return str((root.parent if root.name == "configs" else root).resolve())
        frame = frame.f_back
    return str(Path(default).resolve())


def list_volumes(folder: str | os.PathLike | None) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for every NIfTI file (``.nii``, ``.nii.gz``) directly in ``folder``, sorted by name
    (hidden files skipped).

    Raises:
        SynthCPInputError: ``folder`` is not given, is not a folder, or holds no NIfTI file.
    """
    if folder is None or str(folder) == "":
        raise SynthCPInputError("no input folder: give --dataset_dir DIR (a folder of NIfTI CT volumes)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SynthCPInputError(f"input folder {path} does not exist or is not a folder")
    files = sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_NIFTI)
    )
    if not files:
        raise SynthCPInputError(f"input folder {path} holds no NIfTI file (.nii or .nii.gz)")
    return [{"image": str(p)} for p in files]


class PredictDSCd(MapTransform):
    """The DSC alarm's judgement of each case's segmentation, on the preprocessed (working) grid.

    Placed in the evaluator's postprocessing after the argmax and before the inversion to the input grid, so the
    alarm judges exactly the segmentation the bundle writes (its own segmenter is not run again). For each case it
    calls the alarm's predictor (synthesize ``G(ŷ)``, compare, VAE alarm, pairwise Dice with the fold segmenters
    when the bundle has them, ensembles), applies the alarm's flag rule, and rewrites, atomically after every case,
    ``<output_dir>/predicted_dsc.csv`` (the columns of the alarm's ``summary.csv``) and
    ``<output_dir>/predicted_dsc.json`` (every case's alarm report, full precision). The case's predicted DSC is
    also stored in the data dictionary under ``"predicted_dsc"``.

    Args:
        keys: the segmentation key: labels ``(1, H, W, D)`` on the working grid.
        alarm: a :class:`~synthcp3d.alarm.DSCAlarm`, e.g. ``DSCAlarm.from_bundle(bundle_root)``.
        output_dir: where the two tables go.
        image_key: the preprocessed image ``(1, H, W, D)`` (a MetaTensor: its affine and source file are read).
    """

    def __init__(self, keys: Any, alarm: Any, output_dir: str | os.PathLike, image_key: str = "image") -> None:
        super().__init__(keys)
        self.alarm = alarm
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.reports: list[Any] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            report = self._judge(d[self.image_key], d[key])
            self.reports.append(report)
            self._write()
            d["predicted_dsc"] = report.predicted_dsc
        return d

    @torch.no_grad()
    def _judge(self, image: Any, segmentation: Any) -> Any:
        start = time.perf_counter()
        source = str(getattr(image, "meta", {}).get("filename_or_obj", "<array>"))
        labels = np.rint(torch.as_tensor(segmentation)[0].detach().cpu().numpy()).astype(np.uint8)
        prediction = self.alarm.predictor(image, segmentation=labels)
        info = self.alarm.predictor.info
        report = AlarmReport(case=case_name(Path(source)), source=source)
        meta = getattr(image, "meta", {})
        if "original_affine" in meta and "spatial_shape" in meta:  # the input as read, before the preprocessing
            report.affine = np.asarray(meta["original_affine"], dtype=np.float64)
            report.shape = tuple(int(n) for n in np.asarray(meta["spatial_shape"]).ravel())
            report.spacing = tuple(float(s) for s in np.linalg.norm(report.affine[:3, :3], axis=0))
        report.predicted_dsc = {m: dict(v) for m, v in prediction.dsc.items()}
        report.threshold, report.threshold_source = self.alarm.threshold, self.alarm.threshold_source
        report.flag_method = self.alarm.flag_method
        report.flagged = flag_case(report.predicted_dsc, self.alarm.threshold, self.alarm.flag_method)
        report.model, report.bundle = dict(info.get("model", {})), dict(info.get("bundle", {}))
        report.judged = {"segmentation": "bundle segmenter (this bundle's inference.yaml)"}
        report.seconds = {"total": time.perf_counter() - start}
        return report

    def _write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_summary(self.reports, self.output_dir / PREDICTED_DSC_CSV)
        atomic_save_json([r.to_dict() for r in self.reports], self.output_dir / PREDICTED_DSC_JSON)
