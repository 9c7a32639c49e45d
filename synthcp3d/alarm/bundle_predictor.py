"""The DSC alarm's predictor built from a trained pancreas bundle (``bundles/pancreas_ct_synthcp``).

A *trained bundle folder* is the output folder of the study (``synthcp run pancreas --out DIR``, or
``<bundle>/outputs`` when the stages ran with the bundle's default ``output_dir``). It holds:

- ``models/settings.json``: the study settings (spacing, HU window, sliding window, ROI and VAE sizes, labels);
- ``models/networks.json``: how each network was built (``_target_`` + JSON arguments, written by the stages);
- ``models/segmenter.pt``, ``generator.pt``, ``comparator_synthcp.pt``, ``mask_vae.pt``: the weights;
- ``models/vae_alarm_regressor.json``: the VAE alarm's DSC regressor.

All of it is read with the study's own loaders (:func:`synthcp3d.workflows.pancreas_model.load_study`,
:func:`~synthcp3d.workflows.pancreas_model.load_network`, :func:`~synthcp3d.workflows.pancreas_model.load_regressor`),
from the trained-model module: the training stages (:mod:`synthcp3d.workflows.pancreas` and the modules beside it)
are never imported.

Per volume, on the preprocessed (working) grid, with the functions the study's ``evaluate`` stage scores a case with
(:mod:`synthcp3d.workflows.pancreas_scoring`):
segment (sliding-window AH-Net) -> pancreas ROI (``synthcp3d.roi``: fixed box around the predicted pancreas)
-> synthesize ``G(ŷ)`` on the ROI -> comparator: predicted DSC per class and the voxel error probability on the ROI
-> VAE alarm (aspect-keeping tight crop of the predicted mask, the VAE's loss value, linear regressor) -> ensemble =
mean of SynthCP and VAE alarm. A class absent from the segmentation is predicted DSC 0 by both (as in ``evaluate``).
The error probability is only assessed inside the ROI; outside it is written as 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from synthcp3d import __version__
from synthcp3d.alarm.predictor import Prediction
from synthcp3d.alarm.timing import StageTimer
from synthcp3d.data.geometry import affine_of
from synthcp3d.errors import SynthCPInputError
from synthcp3d.roi import paste_from_box
from synthcp3d.scoring.ensemble import mean_ensemble
from synthcp3d.study_registry import study_bundle
from synthcp3d.workflows import pancreas_model as wf
from synthcp3d.workflows.pancreas_scoring import (
    pairwise_dice_quality,
    segment_volume,
    synthesize_and_compare,
    vae_alarm_dsc,
)

__all__ = [
    "BundlePredictor",
    "resolve_trained_folder",
    "pancreas_config",
    "REQUIRED",
]

#: the networks the alarm uses (names of :data:`synthcp3d.workflows.pancreas_model.NETWORKS`)
REQUIRED = ("segmenter", "generator", "comparator_synthcp", "mask_vae")
EXPECTED_CLASSES = wf.CLASS_NAMES


def resolve_trained_folder(bundle: str | os.PathLike) -> Path:
    """The folder holding ``models/`` for ``bundle``: the folder itself or its ``outputs/`` (bundle default)."""
    path = Path(bundle).expanduser()
    if not path.is_dir():
        raise SynthCPInputError(f"bundle folder {path} does not exist")
    for candidate in (path, path / "outputs"):
        if (candidate / "models").is_dir():
            return candidate
    raise SynthCPInputError(
        f"{path} is not a trained pancreas bundle: no models/ folder in it (nor in {path / 'outputs'}); "
        "train one with 'synthcp run pancreas --out DIR' and give --bundle DIR"
    )


def _bundle_version() -> dict[str, Any]:
    info: dict[str, Any] = {"name": "pancreas_ct_synthcp", "synthcp_version": __version__}
    metadata = Path(__file__).resolve().parents[2] / "bundles" / "pancreas_ct_synthcp" / "configs" / "metadata.json"
    if metadata.is_file():
        try:
            meta = json.loads(metadata.read_text())
            info.update(version=meta.get("version"), monai_version=meta.get("monai_version"))
        except ValueError:
            pass
    return info


class BundlePredictor:
    """The trained networks of a pancreas bundle as a :class:`~synthcp3d.alarm.predictor.Predictor`.

    Use :meth:`from_bundle`. Attributes ``labels``, ``info``, ``device``, ``study`` (the study settings as a
    ``PancreasStudy``), and the networks ``segmenter``, ``generator``, ``comparator``, ``vae``, ``vae_regressor``
    and ``fold_segmenters`` (the cross-validation folds' segmenters when the folder has them: the other members of
    the pairwise-Dice ensemble; without them its predictions are None).
    """

    def __init__(
        self,
        study: wf.PancreasStudy,
        segmenter: torch.nn.Module,
        generator: torch.nn.Module,
        comparator: torch.nn.Module,
        vae: torch.nn.Module,
        vae_regressor: Any,
        info: dict[str, Any],
        fold_segmenters: Sequence[torch.nn.Module] = (),
    ) -> None:
        self.study = study
        self.device = torch.device(study.device)
        self.segmenter, self.generator, self.comparator, self.vae = segmenter, generator, comparator, vae
        self.vae_regressor = vae_regressor
        self.fold_segmenters = list(fold_segmenters)
        self.labels = {i: n for i, n in enumerate(study.class_names)}
        self.info = info
        self._chain = study.preprocessing(label_key=None, load=False)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike, device: torch.device | str = "cpu") -> BundlePredictor:
        """Load a trained bundle folder; refuse (one line) when it is missing, incomplete or mismatched."""
        folder = resolve_trained_folder(bundle)
        study = wf.load_study(folder, device=str(device))
        if study.num_classes != len(EXPECTED_CLASSES):
            raise SynthCPInputError(
                f"bundle {folder} has {study.num_classes} labels {list(study.class_names)}; the DSC alarm needs "
                f"{len(EXPECTED_CLASSES)} ({', '.join(EXPECTED_CLASSES)})"
            )
        nets = {name: wf.load_network(study, name) for name in REQUIRED}
        regressor = wf.load_regressor(study, "vae_alarm")
        folds = wf.load_fold_segmenters(study)
        info = {
            "model": {
                "name": f"SynthCP + VAE alarm ({wf.segmenter_name(study)} segmenter, 3D SPADE, siamese comparator, "
                "mask VAE)",
                "settings": study.settings_name,
                "weights": {n: _file_id(study.models / wf.NETWORKS[n][0]) for n in REQUIRED},
                "fold_segmenters": len(folds),
            },
            "bundle": {**_bundle_version(), "path": str(folder.resolve())},
        }
        return cls(
            study, nets["segmenter"], nets["generator"], nets["comparator_synthcp"], nets["mask_vae"], regressor, info,
            folds,
        )

    # ---------------------------------------------------------------- inference
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """The study's preprocessing: ``MetaTensor (1, X, Y, Z)`` in HU -> RAS, study spacing, [-1, 1], on the
        predictor's device (on the CPU of an H200 machine it took three times the whole segmentation,
        ``benchmarks/results/2026-11-30-h200.md``; its time on the GPU is not measured yet)."""
        return self._chain({"image": image.to(self.device)})["image"]

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, timer: StageTimer | None = None, segmentation: np.ndarray | None = None
    ) -> Prediction:
        """Segment (or take ``segmentation`` ``(H, W, D)``, a given mask on this grid), synthesize, compare and run
        the VAE alarm on a preprocessed ``MetaTensor`` ``(1, H, W, D)``."""
        timer = timer or StageTimer(self.device)
        study = self.study
        x = image[0].detach().cpu().numpy().astype(np.float32)
        if segmentation is None:
            with timer("segment"):
                pred = segment_volume(study, self.segmenter, x)
        else:
            pred = np.asarray(segmentation).astype(np.int64)
        judged = synthesize_and_compare(study, self.generator, self.comparator, x, pred, timer=timer)
        with timer("vae"):
            q_vae = vae_alarm_dsc(study, self.vae, self.vae_regressor, pred)
        q_pair = pairwise_dice_quality(study, self.fold_segmenters, x, pred, timer=timer)
        q_syn = judged.quality
        shape = x.shape
        error = paste_from_box(judged.error.cpu().numpy().astype(np.float32), judged.box, shape, fill=0.0)
        synthesized = paste_from_box(judged.synthesis[0, 0].float().cpu().numpy(), judged.box, shape, fill=-1.0)
        names = {1: "pancreas", 2: "tumour"}
        sources = {
            "synthcp": q_syn,
            "vae_alarm": q_vae,
            "ensemble": mean_ensemble(torch.as_tensor(q_syn), torch.as_tensor(q_vae)).numpy(),
            "pairwise_dice": q_pair,  # NaN without fold segmenters, and so is its ensemble:
            "synthcp_pairwise": mean_ensemble(torch.as_tensor(q_syn), torch.as_tensor(q_pair)).numpy()
            if self.fold_segmenters else q_pair,
        }
        dsc = {method: {name: _finite_or_none(q[i]) for i, name in names.items()} for method, q in sources.items()}
        return Prediction(
            segmentation=pred.astype(np.uint8),
            error_probability=error,
            image=x,
            synthesized=synthesized,
            affine=affine_of(image),
            dsc=dsc,
        )


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _file_id(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"file": path.name, "bytes": stat.st_size, "modified": int(stat.st_mtime)}


def pancreas_config(
    root: str | os.PathLike, overrides: Mapping[str, Any] | None = None, stage: str | None = None
) -> ConfigParser:
    """The pancreas bundle's ``configs/common.yaml`` (then ``configs/<stage>.yaml``) with every path set to ``root``,
    the device to the CPU, and ``overrides`` on top (e.g. the demo's small sizes).

    The networks are factories: ``parser.get_parsed_content("segmenter")()`` builds a fresh segmenter.
    """
    configs = study_bundle("pancreas") / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.yaml")] + ([str(configs / f"{stage}.yaml")] if stage else []))
    paths = {"bundle_root": str(root), "output_dir": str(root), "dataset_dir": str(root), "device": "cpu"}
    parser.update({**paths, **(overrides or {})})
    return parser
