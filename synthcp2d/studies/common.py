"""Wiring shared by the two 2D studies (Cityscapes failure detection, StreetHazards anomaly segmentation).

Everything here calls the dimension-generic core with ``spatial_dims=2``: the trainers of ``synthcp3d.engines``,
the networks built by the bundle's factories, the scorers of ``synthcp3d.scoring``. What is 2D is the data: street
images (RGB, ``(3, H, W)`` in [-1, 1]) resized once to the study's ``image_size`` and cached as ``.npz`` by the
``prepare`` stage, labels resized nearest (``(1, H, W)`` uint8).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandFlipd
from PIL import Image
from tqdm.auto import tqdm

from synthcp3d.engines.crossval import load_prediction
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.scoring.synthesis import ClassMeanPainter
from synthcp3d.scoring.tcp import tcp_loss, true_class_probability
from synthcp3d.utils.atomic import atomic_path
from synthcp3d.workflows.common import StudyBase, require_file, study_stage
from synthcp3d.workflows.protocol import (
    SEED_OFFSETS,
    SegmenterRecipe,
    fit_segmenter,
    run_trainer,
    seed_stage,
    spade_options,
    synthesizer_stage,
    train_loader,
)
from synthcp3d.workflows.trained import save_network

__all__ = [
    "StreetStudy",
    "Factory",
    "cache_cases",
    "load_cached",
    "LoadCase",
    "case_dataset",
    "image_tensor",
    "fit_street_segmenter",
    "fit_confidnet",
    "train_synthesizer",
    "train_autoencoder",
    "segment",
    "synthesize",
    "load_painter",
]

logger = logging.getLogger(__name__)

Factory = Callable[..., torch.nn.Module]


@dataclass
class StreetStudy(StudyBase):
    """Settings shared by the stages of a 2D street-scene study.

    Attributes:
        image_size: ``(W, H)`` every image is resized to (authors' release: 512x256; must suit the networks:
            a multiple of 32 for FCN-8 / the comparator, of ``2 ** num_upsamples`` for SPADE).
        max_cases: use only the first N images of each split (None: all) — for quick checks.
    """

    image_size: Sequence[int] = (512, 256)
    max_cases: int | None = None

    def __post_init__(self) -> None:
        self.image_size = tuple(int(s) for s in self.image_size)
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise SynthCPInputError(f"image_size must be (W, H) with both >= 8, got {self.image_size}")

    @property
    def num_classes(self) -> int:
        """Classes the segmenter and the generator know (subclasses say)."""
        raise NotImplementedError

    @property
    def ignore_index(self) -> int | None:
        """Label value without a target (``None``: every pixel is labelled)."""
        return None

    @classmethod
    def of_run(cls, folder: str | Path, device: str = "cpu") -> StreetStudy:
        """The study of a run folder, to read what its stages wrote (cases, networks, reports) on ``device``: its
        default settings, ``folder/data`` recorded as the data folder (the cached cases are below ``folder``)."""
        folder = Path(folder)
        return cls(dataset_dir=str(folder / "data"), output_dir=str(folder), device=str(device), progress=False)

    def cases(self) -> dict:
        """``prepare/cases.json``: the cached records of each split (and the study's folds), their paths below this
        study's folders (`StudyBase.resolve_paths`: a moved run)."""
        cases = json.loads(require_file(self.out / "prepare" / "cases.json", "prepare").read_text())
        return self.resolve_paths(cases, "prepare")


# ---- data -------------------------------------------------------------------------------------------------------
def _resize(array: np.ndarray, size: Sequence[int], nearest: bool) -> np.ndarray:
    if array.shape[1::-1] == tuple(size):
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize(tuple(size), resample))


def _read_rgb(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as err:
        raise SynthCPInputError(f"cannot read image {path} ({err})") from err


def cache_cases(
    items: Sequence[Mapping[str, Any]],
    out_dir: Path,
    size: Sequence[int],
    read_label: Callable[[str], np.ndarray],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Resize every image (bilinear) and label (nearest) to ``size`` ``(W, H)`` once and cache them.

    Args:
        items: data list entries with ``image``, ``label`` paths and a ``case`` id.
        out_dir: where ``<W>x<H>/{case}.npz`` go (``image`` uint8 ``(3, H, W)``, ``label`` uint8 ``(1, H, W)``).
        read_label: annotation file -> class indices ``(H, W)``.

    Returns:
        the items with ``cache`` (the npz path) added; an existing cache file of the same size is reused (the
        folder is named by the size, so another ``image_size`` never reads a stale cache).
    """
    out_dir = Path(out_dir) / f"{int(size[0])}x{int(size[1])}"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for item in tqdm(items, desc=f"cache {out_dir.parent.name}", disable=not progress, unit="image"):
        path = out_dir / f"{item['case'].replace('/', '_')}.npz"
        if not path.is_file():
            image = _read_rgb(item["image"])
            label = np.asarray(read_label(item["label"]))
            if image.shape[:2] != label.shape:
                raise SynthCPInputError(f"image {item['image']} is {image.shape[:2]} but its label is {label.shape}")
            image = _resize(image, size, nearest=False).transpose(2, 0, 1)
            label = _resize(label.astype(np.uint8), size, nearest=True)[None]
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, image=image, label=label)
        records.append({**dict(item), "cache": str(path)})
    return records


def load_cached(path: str | Path) -> dict[str, np.ndarray]:
    """A cached case: ``image`` uint8 ``(3, H, W)``, ``label`` uint8 ``(1, H, W)``."""
    with np.load(path) as data:
        return {"image": data["image"], "label": data["label"]}


def image_tensor(image_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> float ``(3, H, W)`` in [-1, 1]."""
    return torch.as_tensor(image_uint8, dtype=torch.float32) / 127.5 - 1.0


class LoadCase:
    """Data list entry ``{"cache"[, "pred"]}`` -> ``{"image" (3, H, W), "label" (1, H, W)[, "pred" (1, H, W)]}``."""

    def __call__(self, item: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        case = load_cached(item["cache"])
        out = {"image": image_tensor(case["image"]), "label": torch.as_tensor(case["label"].astype(np.int64))}
        if item.get("pred"):
            out["pred"] = torch.as_tensor(load_prediction(item["pred"]).astype(np.int64))[None]
        return out


def case_dataset(
    records: Sequence[Mapping[str, Any]], flip_prob: float = 0.5, with_pred: bool = False
) -> Dataset:
    """MONAI ``Dataset`` of cached cases with a random horizontal flip of probability ``flip_prob`` (image, label and
    prediction together; 0: no flip)."""
    keys = ["image", "label"] + (["pred"] if with_pred else [])
    transforms: list[Any] = [LoadCase()]
    if flip_prob:
        transforms.append(RandFlipd(keys, prob=float(flip_prob), spatial_axis=1))
    data = [{k: r[k] for k in ("cache", "pred") if k in r} for r in records]
    return Dataset(data, Compose(transforms))


# ---- training (core trainers, 2D data) --------------------------------------------------------------------------
def fit_street_segmenter(
    study: StreetStudy,
    factory: Factory,
    records: Sequence[Mapping[str, Any]],
    checkpoint_dir: Path,
    weights: Path,
    iterations: int,
    batch_size: int,
    lr: float,
    seed: int,
    recipe: Mapping | None = None,
    flip_prob: float = 0.5,
) -> torch.nn.Module:
    """The core's `fit_segmenter` on whole cached images of ``records`` (random horizontal flip of probability
    ``flip_prob``); the study's ignore label has no target. Returns it in eval mode."""
    recipe = SegmenterRecipe.of(recipe)
    if recipe.crop_ratios is not None:
        raise SynthCPInputError("segmenter_recipe.crop_ratios: the 2D studies train on whole images, not patches")
    return fit_segmenter(
        study, factory, partial(case_dataset, records, flip_prob), checkpoint_dir, weights, iterations, batch_size, lr,
        seed, recipe, ignore_index=study.ignore_index, num_classes=study.num_classes,
    )


def _fit_supervised(
    study: StreetStudy,
    model: torch.nn.Module,
    trainable: torch.nn.Module,
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    loss_function: Callable[..., torch.Tensor],
    prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    iterations: int,
    batch_size: int,
    lr: float,
    seed: int,
    flip_prob: float = 0.5,
) -> None:
    """MONAI ``SupervisedTrainer`` on cached cases (random horizontal flip of probability ``flip_prob``),
    ``prepare_batch`` making ``(input, target)``; only ``trainable``'s parameters (a part of ``model``, or ``model``
    itself) are optimised and checkpointed (resumable through `run_training`); ``model`` runs wrapped by
    `StudyBase.prepare_network`."""
    loader = train_loader(study, case_dataset(records, flip_prob), batch_size, seed)
    optimizer = torch.optim.Adam(trainable.parameters(), lr=lr)
    trainer = SupervisedTrainer(
        device=study.torch_device,
        max_epochs=1,
        train_data_loader=loader,
        network=study.prepare_network(model),
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=prepare_batch,
        decollate=False,
    )
    run_trainer(study, trainer, iterations, out_dir, to_save={"network": trainable, "optimizer": optimizer})


def _image_pair(batch: Mapping[str, torch.Tensor], device: torch.device, non_blocking: bool = False, **_: Any):
    x = torch.as_tensor(batch["image"]).to(device, non_blocking=non_blocking)
    return x, x


class _FrozenFeatureHead(torch.nn.Module):
    """``head(features of a frozen segmenter)``: the ConfidNet set-up (only the head learns)."""

    def __init__(self, segmenter: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.segmenter, self.head = segmenter.eval().requires_grad_(False), head

    def train(self, mode: bool = True) -> _FrozenFeatureHead:
        self.training = mode
        self.head.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, features = self.segmenter.forward_features(x)
        return self.head(features)


def fit_confidnet(
    study: StreetStudy,
    segmenter: torch.nn.Module,
    head_factory: Factory,
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    name: str,
    iterations: int,
    batch_size: int,
    lr: float,
    flip_prob: float = 0.5,
) -> torch.nn.Module:
    """TCP baseline (ConfidNet): a head on the frozen segmenter's features regresses the true-class probability
    (`tcp_loss`, MSE over labelled pixels; images flipped horizontally with probability ``flip_prob``) ->
    ``models/<name>.pt`` (``{"confidnet": ...}``) and its ``networks.json`` spec (`save_network`: ``head_factory``'s,
    the features' width included)."""
    offset = SEED_OFFSETS["tcp"]
    seed_stage(study, offset)
    head = head_factory().to(study.torch_device)

    def prepare(batch: Mapping[str, torch.Tensor], device: torch.device, non_blocking: bool = False, **_: Any):
        x, y = torch.as_tensor(batch["image"]).to(device), torch.as_tensor(batch["label"]).to(device)
        with torch.no_grad():
            probs = torch.softmax(segmenter(x).float(), dim=1)
        return x, true_class_probability(probs, y, ignore_index=study.ignore_index)

    _fit_supervised(
        study,
        _FrozenFeatureHead(segmenter, head),
        head,
        records,
        out_dir,
        tcp_loss,
        prepare,
        iterations,
        batch_size,
        lr,
        seed=int(study.seed) + offset,
        flip_prob=flip_prob,
    )
    save_network(study, name, "confidnet", head, head_factory)
    return head.eval()


# ---- stages shared by the 2D studies ------------------------------------------------------------------------------
@study_stage("train_synthesizer", training=True, after=("prepare",))
def train_synthesizer(
    study: StreetStudy,
    generator: Factory,
    discriminator: Factory,
    iterations: int = 50000,
    batch_size: int = 4,
    lr_g: float = 1e-4,
    lr_d: float = 4e-4,
    feature_matching_weight: float = 10.0,
    reconstruction_weight: float = 0.0,
    class_mean_weight: float = 0.0,
    lr_decay_fraction: float = 0.0,
    perceptual_loss: Any = None,
    betas: Sequence[float] = (0.0, 0.9),
    flip_prob: float = 0.5,
) -> dict:
    """2D SPADE (`GanTrainer`: hinge + feature matching [+ L1 reconstruction] [+ per-class mean]) on ground-truth
    (label, image) pairs of the training split -> ``models/generator.pt``; ignore-label pixels are all-zero one-hot
    vectors. Then the class-mean painter on the same images -> ``models/painter.json``. ``lr_decay_fraction``:
    SPADE's linear LR decay; ``perceptual_loss``: its perceptual term (see `fit_synthesizer`); ``flip_prob``: the
    training pairs' random horizontal flip (the painter fits on unflipped images)."""
    options = spade_options(locals())
    train = study.cases()["train"]
    synthesizer_stage(
        study, generator, discriminator, case_dataset(train, flip_prob), case_dataset(train, flip_prob=0.0), iterations,
        batch_size, options, image_channels=3, ignore_index=study.ignore_index,
    )
    return {"num_train": len(train), "iterations": int(iterations)}


def load_painter(study: StreetStudy) -> ClassMeanPainter:
    """The class-mean painter of ``models/painter.json`` (written by ``train_synthesizer``)."""
    return ClassMeanPainter.load(require_file(study.models / "painter.json", "train_synthesizer"))


@study_stage("train_autoencoder", training=True, after=("prepare",))
def train_autoencoder(
    study: StreetStudy, autoencoder: Factory, iterations: int = 20000, batch_size: int = 8, lr: float = 1e-3,
    flip_prob: float = 0.5,
) -> dict:
    """The AE baseline's auto-encoder reconstructing the training images (L1; random horizontal flip of probability
    ``flip_prob``) -> ``models/autoencoder.pt``."""
    train = study.cases()["train"]
    offset = SEED_OFFSETS["autoencoder"]
    seed_stage(study, offset)
    net = autoencoder().to(study.torch_device)
    _fit_supervised(
        study,
        net,
        net,
        train,
        study.stage_dir("train_autoencoder") / "checkpoints",
        torch.nn.L1Loss(),
        _image_pair,
        iterations,
        batch_size,
        lr,
        seed=int(study.seed) + offset,
        flip_prob=flip_prob,
    )
    save_network(study, "autoencoder", "autoencoder", net, autoencoder)
    return {"num_train": len(train), "iterations": int(iterations)}


# ---- inference ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def segment(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image inference: ``x (B, 3, H, W)`` -> ``(logits (B, C, H, W), features (B, F, H', W'))``."""
    net.eval()
    return net.forward_features(x)


@torch.no_grad()
def synthesize(
    generator: torch.nn.Module, label: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """``x̂ = G(onehot(label))``: label map ``(B, H, W)`` or ``(B, 1, H, W)`` -> image ``(B, 3, H, W)``."""
    generator.eval()
    if label.ndim == 3:
        label = label[:, None]
    return generator(one_hot_labels(label, num_classes, ignore_index=ignore_index))
