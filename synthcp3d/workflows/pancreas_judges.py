"""Stages of the 3D flagship study that train the judges of a segmentation: the synthesizer, the comparators, the
VAE alarm (``train_synthesizer``, ``train_comparator``, ``train_vae_alarm``; the outputs are listed in
:mod:`synthcp3d.workflows.pancreas`).

The comparators and the VAE alarm's regressor learn from the cross-validated predictions of ``crossval``; the
synthesizer from the ground-truth (label, image) pairs of the training cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, RandFlipd
from tqdm.auto import tqdm

from synthcp3d.engines.mask_perturbation import mask_perturbation_transform
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.roi import PancreasROICropd
from synthcp3d.transforms import load_preprocessed
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import on_main_process, study_stage
from synthcp3d.workflows.pancreas import cv_records
from synthcp3d.workflows.pancreas_model import VAE_CROP_MARGIN, Factory, PancreasStudy, load_network, load_volume
from synthcp3d.workflows.pancreas_scoring import vae_input
from synthcp3d.workflows.protocol import fit_comparator, fit_mask_vae, spade_options, synthesizer_stage
from synthcp3d.workflows.protocol_judges import fit_vae_alarm_regressor

__all__ = ["train_synthesizer", "train_comparator", "train_vae_alarm"]


# ================================================================================================================
# synthesizer
# ================================================================================================================
def _roi_pair_dataset(
    study: PancreasStudy, items: Sequence[dict], source_key: str, jitter: int, keys: Sequence[str],
    extra: Sequence = (), flip_prob: float = 0.5,
) -> CacheDataset:
    """Dataset of pancreas-ROI crops ``(1, *roi)`` of ``keys``, centred on ``source_key``'s labels > 0, flipped along
    the last axis with probability ``flip_prob``, then the ``extra`` transforms."""
    transform = Compose(
        [
            *load_preprocessed(keys).transforms,
            PancreasROICropd(keys, source_key=source_key, roi_size=study.roi_size, pad_values={"image": -1.0},
                             jitter=jitter, seed=int(study.seed)),
            RandFlipd(keys, prob=float(flip_prob), spatial_axis=2),
            *extra,
        ]
    )
    return CacheDataset(items, transform, cache_rate=study.cache_rate, progress=False)


@study_stage("train_synthesizer", training=True, after=("prepare",))
def train_synthesizer(
    study: PancreasStudy,
    generator: Factory,
    discriminator: Factory,
    iterations: int = 50000,
    batch_size: int = 2,
    lr_g: float = 1e-4,
    lr_d: float = 4e-4,
    jitter: int = 4,
    feature_matching_weight: float = 10.0,
    reconstruction_weight: float = 0.0,
    class_mean_weight: float = 0.0,
    lr_decay_fraction: float = 0.0,
    perceptual_loss: Any = None,
    betas: Sequence[float] = (0.0, 0.9),
    flip_prob: float = 0.5,
) -> dict:
    """3D SPADE on ground-truth (label, image) pancreas-ROI pairs of the training cases -> ``models/generator.pt``,
    and the class-mean painter (its non-learned replacement) on the same crops -> ``models/painter.json``.

    The ROI is centred on the ground-truth pancreas with a random shift of up to ``jitter`` voxels per axis (the
    test-time centre comes from a prediction). ``reconstruction_weight`` adds an L1 term and
    ``class_mean_weight`` a per-class mean-intensity term (see `GanTrainer`); ``lr_decay_fraction`` is SPADE's
    linear LR decay and ``perceptual_loss`` SPADE's perceptual term (see `fit_synthesizer`). ``flip_prob``: the
    crops' random flip (along the last axis).
    """
    options = spade_options(locals())
    meta = study.cases()
    items = [{"image": meta["cases"][c]["image"], "label": meta["cases"][c]["label"]} for c in meta["train"]]
    dataset = _roi_pair_dataset(study, items, "label", jitter, ("image", "label"), flip_prob=flip_prob)
    # the painter fits on the same crops, before the L1 figure reads some (both passes draw the crops' random shifts)
    g = synthesizer_stage(study, generator, discriminator, dataset, dataset, iterations, batch_size, options)
    l1 = on_main_process(_synthesis_l1, study, g, dataset)
    return {"iterations": int(iterations), "train_roi_l1": l1}


@torch.no_grad()
def _synthesis_l1(study: PancreasStudy, g: torch.nn.Module, dataset: Dataset, n: int = 8) -> float:
    """Mean |G(y) - x| on a few training ROIs (in [-1, 1] units): a sanity figure for the log."""
    g.eval()
    errs = []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        x = torch.as_tensor(item["image"])[None].float().to(study.torch_device)
        y = torch.as_tensor(item["label"])[None].long().to(study.torch_device)
        errs.append(float((g(one_hot_labels(y, study.num_classes)) - x).abs().mean()))
    return float(np.mean(errs)) if errs else float("nan")


# ================================================================================================================
# comparators (SynthCP + Direct Prediction)
# ================================================================================================================
@study_stage("train_comparator", training=True, after=("prepare", "crossval", "train_synthesizer"))
def train_comparator(
    study: PancreasStudy,
    comparator: Factory,
    direct: Factory,
    generator: Factory,
    iterations: int = 20000,
    batch_size: int = 4,
    lr: float = 1e-4,
    jitter: int = 2,
    quality_loss: str = "l1",
    weight_decay: float = 1e-4,
    optimizer: str = "adamw",
    mask_perturbation: dict | None = None,
    quality_weight: float = 1.0,
    error_weight: float = 1.0,
    flip_prob: float = 0.5,
) -> dict:
    """Train SynthCP's comparator on ``(x, G(ŷ), ŷ)`` and Direct Prediction on ``(x, ŷ)``, both on the CV predictions.

    Same data, same schedule, same seed for both: Direct Prediction is the ablation without synthesis.
    ``quality_loss``: ``"l1"`` (paper eq. 8) or ``"bce"`` (see `comparator_loss`); ``quality_weight``,
    ``error_weight``: the weights of its two terms (paper: 1, 1); ``optimizer``: ``"adamw"`` or
    ``"radam"`` (see `comparator_optimizer`). ``mask_perturbation``: ``None`` (the paper: CV predictions only) or
    the arguments of `RandMaskPerturbd` (e.g. ``{"prob": 0.5}``): that share of the ROI crops is judged with a
    perturbed mask instead (not in the paper; see `synthcp3d.engines.mask_perturbation`). ``flip_prob``: the
    crops' random flip (along the last axis).
    """
    records = cv_records(study)
    items = [{"image": r["image"], "label": r["label"], "pred": r["pred"]} for r in records.values()]
    perturb = mask_perturbation_transform(mask_perturbation, seed=int(study.seed))
    dataset = _roi_pair_dataset(
        study, items, "pred", jitter, ("image", "label", "pred"), extra=perturb, flip_prob=flip_prob
    )
    g = load_network(study, "generator", generator)
    for name, factory in (("comparator_synthcp", comparator), ("comparator_direct", direct)):
        checkpoints = study.stage_dir("train_comparator") / f"checkpoints_{name.split('_', 1)[1]}"
        fit_comparator(
            study, name, factory, dataset, g, checkpoints, iterations, batch_size, lr, weight_decay, metric="dice",
            quality_loss=quality_loss, optimizer=optimizer, quality_weight=quality_weight, error_weight=error_weight,
        )
    return {"num_cases": len(items), "iterations": int(iterations), "quality_loss": quality_loss, "optimizer": optimizer,
            "mask_perturbation": mask_perturbation}


# ================================================================================================================
# VAE alarm
# ================================================================================================================
@study_stage("train_vae_alarm", training=True, after=("prepare", "crossval"))
def train_vae_alarm(
    study: PancreasStudy,
    mask_vae: Factory,
    iterations: int = 20000,
    batch_size: int = 4,
    lr: float = 1e-4,
    beta: float = 1e-3,
    feature: str = "loss",
    crop_margin: int = VAE_CROP_MARGIN,
    flip_prob: float = 0.5,
) -> dict:
    """VAE alarm (Liu et al., ICCV 2019, reimplemented): a mask VAE on ground-truth masks (tight crop with
    ``crop_margin`` voxels around, aspect kept; flipped along the last axis with probability ``flip_prob``), then its
    ``feature`` of the CV predictions (``"loss"``: the VAE's loss value, as published; ``"dice"``: the
    reconstruction Dice, a named variant) regressed (linear, per class) onto their true DSC.

    Writes ``models/mask_vae.pt`` and ``models/vae_alarm_regressor.json`` (with ``vae_feature`` and
    ``vae_crop_margin``: evaluate, inference and the alarm crop as trained).
    """
    if feature not in ("loss", "dice"):
        raise SynthCPInputError(f"VAE alarm feature must be 'loss' or 'dice', got {feature!r}")
    if isinstance(crop_margin, bool) or not isinstance(crop_margin, int) or crop_margin < 0:
        raise SynthCPInputError(f"VAE alarm crop_margin must be a whole number of voxels >= 0, got {crop_margin!r}")
    margin = crop_margin
    meta = study.cases()

    def masks() -> Dataset:
        labels = [
            {"label": vae_input(study, load_volume(meta["cases"][c]["label"]), margin).argmax(1).cpu()}  # (1, *vae)
            for c in tqdm(meta["train"], desc="VAE masks", disable=not study.progress)
        ]
        return Dataset(labels, RandFlipd("label", prob=float(flip_prob), spatial_axis=2))

    vae = fit_mask_vae(
        study, mask_vae, masks, study.stage_dir("train_vae_alarm") / "checkpoints", iterations, batch_size, lr, beta
    )
    return on_main_process(_fit_vae_regressor, study, vae, iterations, feature, margin)


def _fit_vae_regressor(study: PancreasStudy, vae: torch.nn.Module, iterations: int, feature: str, margin: int) -> dict:
    """The VAE's ``feature`` of every CV prediction (its aspect-keeping crop, ``margin`` voxels around) regressed
    onto its true DSC -> ``models/vae_alarm_regressor.json`` (with the margin; + ``train_vae_alarm/cv_features.json``);
    the stage's info."""
    records = cv_records(study)
    masks = (vae_input(study, load_volume(r["pred"]), margin) for r in records.values())
    true = np.array([r["true_dsc"] for r in records.values()], dtype=np.float64)
    feats = fit_vae_alarm_regressor(
        study, vae, masks, true, study.models / "vae_alarm_regressor.json", feature, {"vae_crop_margin": margin}
    )
    features = {c: f.tolist() for c, f in zip(records, feats)}
    atomic_save_json(features, study.stage_dir("train_vae_alarm") / "cv_features.json")
    return {"iterations": int(iterations), "num_cv_cases": len(records), "feature": feature}
