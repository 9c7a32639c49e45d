"""The training bodies every study's stages run, written once for any ``spatial_dims``.

A study's stage function is an adapter: it reads its cases, builds the datasets its crop rule needs (3D patches and
pancreas ROIs of preprocessed volumes, 2D cached street images), names the weights and picks the quality measure
(DSC or IoU), then calls these. Each body seeds itself from the study seed plus a fixed per-stage offset (so the
studies' stages draw independent streams), trains through `run_training` (resumable, distributed when the study
is) and writes ``models/<name>.pt`` with its ``networks.json`` spec (`synthcp3d.workflows.trained.save_network`).

- `fit_segmenter`: the segmenter ``M`` (final model or a cross-validation fold), trained by a `SegmenterRecipe`;
- `fit_synthesizer`: SPADE ``G`` on ground-truth (label, image) pairs; `synthesizer_stage`: the ``train_synthesizer``
  stage's body (``G``, then the class-mean painter);
- `fit_comparator`: a comparator ``F`` (SynthCP or Direct Prediction) on cross-validated predictions;
- `fit_mask_vae`: the VAE alarm's mask auto-encoder on ground-truth masks.

The judges fitted without training a network (painter, regressors) are :mod:`synthcp3d.workflows.protocol_judges`'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from monai.data import Dataset
from monai.utils import set_determinism

from synthcp3d.engines.checkpoint import load_weights, save_weights
from synthcp3d.engines.comparator import ComparatorTrainer, comparator_optimizer
from synthcp3d.engines.distributed import unwrap
from synthcp3d.engines.gan import GanTrainer
from synthcp3d.engines.mask_vae import MaskVAETrainer
from synthcp3d.engines.sampling import make_train_loader
from synthcp3d.engines.segmentation import SegmentationLoss, SegmenterTrainer
from synthcp3d.engines.training import run_training
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.comparator import comparator_loss
from synthcp3d.networks.gan_losses import make_gan_optimizers
from synthcp3d.workflows.common import StudyBase, on_main_process
from synthcp3d.workflows.protocol_judges import fit_painter
from synthcp3d.workflows.trained import save_network

logger = logging.getLogger(__name__)

__all__ = [
    "SEED_OFFSETS",
    "seed_stage",
    "train_loader",
    "run_trainer",
    "SegmenterRecipe",
    "MEDIAN_FREQUENCY",
    "median_frequency_weights",
    "fit_segmenter",
    "fit_synthesizer",
    "SPADE_OPTIONS",
    "spade_options",
    "synthesizer_stage",
    "linear_decay_schedule",
    "fit_comparator",
    "fit_mask_vae",
    "fold_seed",
]

Factory = Callable[..., torch.nn.Module]

#: added to the study seed by each training body (the final segmenter uses the seed itself, fold ``i`` ``seed+1+i``)
SEED_OFFSETS = {"synthesizer": 100, "comparator": 200, "mask_vae": 300, "autoencoder": 400, "tcp": 500}


# ---- the pieces every body uses ----------------------------------------------------------------------------------
def seed_stage(study: StudyBase, offset: int = 0) -> None:
    """Seed every generator (MONAI ``set_determinism``) with the study seed + ``offset``."""
    set_determinism(seed=int(study.seed) + int(offset))


def train_loader(study: StudyBase, dataset: Dataset, batch_size: int, seed: int, drop_last: bool = False):
    """A seeded, shuffling, resumable training loader of ``dataset`` (split over the ranks in a distributed run)."""
    return make_train_loader(
        dataset, batch_size=batch_size, seed=int(seed), num_workers=study.num_workers, drop_last=drop_last
    )


def run_trainer(study: StudyBase, trainer: Any, iterations: int, checkpoint_dir: Path, **kwargs: Any) -> None:
    """Run ``trainer`` for ``iterations``, checkpointed in ``checkpoint_dir`` (resumable unless ``force``);
    ``kwargs`` go to `run_training` (e.g. ``to_save``)."""
    run_training(trainer, int(iterations), checkpoint_dir, **kwargs, **study.train_kwargs(iterations))


def _trained(study: StudyBase, name: str) -> bool:
    return (study.models / f"{name}.pt").is_file() and not study.force


# ---- segmenter ---------------------------------------------------------------------------------------------------
@dataclass
class SegmenterRecipe:
    """How a segmenter is trained (bundle config ``segmenter_recipe``; the same for the final model and the folds).

    Attributes:
        include_background: count the background in the Dice term.
        batch_dice: Dice of each class summed over the batch (a patch without tumour does not reward missing it).
        class_weights: per-class weights of both loss terms, e.g. ``[1, 1, 3]``, or ``"median_frequency"``: Eigen &
            Fergus's median frequency balancing, counted on the training labels (:func:`median_frequency_weights`).
        crop_ratios: patch centres per class, e.g. background : pancreas : tumour ``[1, 1, 2]``; None = 1:2
            background : foreground (``RandCropByPosNegLabeld``); used by studies that train on patches.
        lr_decay: ``"poly"`` (``(1 - t/T) ** lr_power``, nnU-Net's schedule) or ``"none"``.
        weight_decay: Adam's weight decay.
        lr_power: the poly decay's power (nnU-Net: 0.9).
    """

    include_background: bool = True
    batch_dice: bool = False
    class_weights: Sequence[float] | str | None = None
    crop_ratios: Sequence[float] | None = None
    lr_decay: str = "none"
    weight_decay: float = 1e-5
    lr_power: float = 0.9

    def __post_init__(self) -> None:
        if self.lr_decay not in ("poly", "none"):
            raise SynthCPInputError(f"segmenter_recipe.lr_decay must be 'poly' or 'none', got {self.lr_decay!r}")
        if isinstance(self.class_weights, str) and self.class_weights != MEDIAN_FREQUENCY:
            raise SynthCPInputError(f"segmenter_recipe.class_weights must be a list, null or {MEDIAN_FREQUENCY!r}, "
                                    f"got {self.class_weights!r}")

    @classmethod
    def of(cls, recipe: SegmenterRecipe | Mapping | None) -> SegmenterRecipe:
        """A recipe from a bundle config mapping (None: the defaults)."""
        return recipe if isinstance(recipe, cls) else cls(**dict(recipe or {}))

    def loss(self, ignore_index: int | None = None) -> torch.nn.Module:
        if isinstance(self.class_weights, str):
            raise ValueError("resolve class_weights='median_frequency' (median_frequency_weights) before the loss")
        return SegmentationLoss(
            ignore_index=ignore_index, include_background=self.include_background, batch=self.batch_dice,
            class_weights=self.class_weights,
        )


MEDIAN_FREQUENCY = "median_frequency"


def median_frequency_weights(label_maps: Iterable[np.ndarray | torch.Tensor], num_classes: int) -> list[float]:
    """Median frequency balancing (Eigen & Fergus, ICCV 2015; SegNet's class weights): ``w_c = median(f) / f_c``.

    ``f_c`` = pixels of class ``c`` / all valid pixels of the label maps that contain ``c``; the median runs over the
    classes that occur. A class no label map holds gets weight 1 (nothing to balance; with random patches, a rare
    class that no counted patch happened to hold is weighted 1 too). Written here because MONAI
    and scikit-learn offer only global-frequency weights (``compute_class_weight``), not this per-image definition.

    Args:
        label_maps: integer label maps of any shape (e.g. ``(1, *S)``), one per training sample.
        num_classes: classes ``0 .. num_classes - 1``; values outside (an ignore label such as 255) are not counted.
    """
    pixels = np.zeros(num_classes, dtype=np.float64)
    present_in = np.zeros(num_classes, dtype=np.float64)  # valid pixels of the maps that hold the class
    for label in label_maps:
        values = torch.as_tensor(label).detach().cpu().numpy().astype(np.int64).ravel()
        values = values[(values >= 0) & (values < num_classes)]
        counts = np.bincount(values, minlength=num_classes)[:num_classes].astype(np.float64)
        pixels += counts
        present_in += (counts > 0) * values.size
    occurs = present_in > 0
    if not occurs.any():
        raise SynthCPInputError("median frequency class weights: the training labels hold no class")
    freq = np.divide(pixels, present_in, out=np.zeros(num_classes), where=occurs)
    return np.where(occurs, np.median(freq[occurs]) / np.where(occurs, freq, 1.0), 1.0).tolist()


def _training_labels(dataset: Dataset) -> Iterable[Any]:
    """Every sample's ``label``, one pass; a patch-sampling transform's item is a list of samples."""
    for i in range(len(dataset)):
        item = dataset[i]
        for sample in item if isinstance(item, list) else [item]:
            yield sample["label"]


def fit_segmenter(
    study: StudyBase,
    factory: Factory,
    make_dataset: Callable[[], Dataset],
    checkpoint_dir: Path,
    weights: Path,
    iterations: int,
    batch_size: int,
    lr: float,
    seed: int,
    recipe: SegmenterRecipe | Mapping | None = None,
    ignore_index: int | None = None,
    drop_last: bool = False,
    num_classes: int | None = None,
) -> torch.nn.Module:
    """Train one segmenter (Dice + CE by ``recipe``, Adam, optional poly LR decay) on ``make_dataset()`` of
    ``{"image" (Ci, *S), "label" (1, *S)}`` samples -> ``weights`` (``{"segmenter": ...}``, atomic); resumable from
    ``checkpoint_dir``. Existing ``weights`` are loaded instead unless ``force`` (the dataset is then not built).
    ``num_classes`` is needed by ``recipe.class_weights="median_frequency"`` (counted on one pass over the dataset).

    Returns the network unwrapped, in eval mode (distributed runs: every rank holds the same weights).
    """
    recipe = SegmenterRecipe.of(recipe)
    set_determinism(seed=int(seed))
    if weights.is_file() and not study.force:
        net = factory().to(study.torch_device)
        load_weights({"segmenter": net}, weights)
        return net.eval()
    net = study.prepare_network(factory())
    dataset = make_dataset()
    if isinstance(recipe.class_weights, str):  # MEDIAN_FREQUENCY (the recipe refuses any other string)
        if num_classes is None:
            raise SynthCPInputError("segmenter_recipe.class_weights='median_frequency' needs the study's class count")
        with torch.random.fork_rng(devices=[]):  # counting must not move the training run's random stream
            balanced = median_frequency_weights(_training_labels(dataset), num_classes)
        if idist.get_rank() == 0:
            logger.info("median frequency class weights: %s", [round(w, 3) for w in balanced])
        recipe = replace(recipe, class_weights=balanced)
    loader = train_loader(study, dataset, batch_size, seed, drop_last=drop_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=int(iterations), power=float(recipe.lr_power))
        if recipe.lr_decay == "poly" else None
    )
    trainer = SegmenterTrainer(
        study.torch_device, loader, net, optimizer, loss_function=recipe.loss(ignore_index).to(study.torch_device),
        lr_scheduler=scheduler, amp=study.amp,
    )
    run_trainer(study, trainer, iterations, checkpoint_dir)
    save_weights({"segmenter": net}, weights)
    return unwrap(net).eval()


# ---- synthesizer -------------------------------------------------------------------------------------------------
def fit_synthesizer(
    study: StudyBase,
    generator: Factory,
    discriminator: Factory,
    dataset: Dataset,
    iterations: int,
    batch_size: int,
    num_classes: int,
    ignore_index: int | None = None,
    lr_g: float = 1e-4,
    lr_d: float = 4e-4,
    feature_matching_weight: float = 10.0,
    reconstruction_weight: float = 0.0,
    class_mean_weight: float = 0.0,
    lr_decay_fraction: float = 0.0,
    perceptual_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    betas: Sequence[float] = (0.0, 0.9),
) -> torch.nn.Module:
    """SPADE: fresh G and D, TTUR Adam, `GanTrainer` (hinge + feature matching [+ perceptual] [+ L1 reconstruction]
    [+ per-class mean]) on ``dataset``'s ``{"label" (1, *S), "image" (Ci, *S)}`` ground-truth pairs, resumable from
    ``<train_synthesizer>/checkpoints`` -> ``models/generator.pt``. Returns G (unwrapped).

    ``lr_decay_fraction``: SPADE's schedule (``niter`` then ``niter_decay``): both LRs constant, then linearly to 0
    over this final fraction of the iterations (SPADE's Cityscapes setting: 0.5; 0 keeps them constant). With Adam's
    beta1 = 0 the weights of a constant-LR run keep jumping at the last step; the decay lets them settle.
    ``perceptual_loss``: SPADE's VGG term, e.g. `synthcp3d.networks.LocalPerceptualLoss` on a feature extractor
    saved locally (nothing is downloaded; ``None``: off, feature matching carries the recipe). ``betas``: Adam's, for
    both networks (SPADE's TTUR: (0, 0.9)).
    """
    offset = SEED_OFFSETS["synthesizer"]
    seed_stage(study, offset)
    loader = train_loader(study, dataset, batch_size, int(study.seed) + offset)
    g, d = study.prepare_network(generator()), study.prepare_network(discriminator())
    opt_g, opt_d = make_gan_optimizers(g, d, lr_g=lr_g, lr_d=lr_d, betas=(float(betas[0]), float(betas[1])))
    schedulers = {
        name: linear_decay_schedule(opt, int(iterations), lr_decay_fraction)
        for name, opt in (("scheduler_g", opt_g), ("scheduler_d", opt_d))
    } if lr_decay_fraction > 0 else None
    trainer = GanTrainer(
        study.torch_device, loader, g, d, opt_g, opt_d, num_classes=num_classes, ignore_index=ignore_index,
        feature_matching_weight=feature_matching_weight, reconstruction_weight=reconstruction_weight,
        class_mean_weight=class_mean_weight, schedulers=schedulers, perceptual_loss=perceptual_loss, amp=study.amp,
    )
    run_trainer(study, trainer, iterations, study.stage_dir("train_synthesizer") / "checkpoints")
    save_network(study, "generator", "generator", g, generator)
    return unwrap(g)


#: the SPADE recipe arguments of every ``train_synthesizer`` stage, handed on to `fit_synthesizer`
SPADE_OPTIONS = (
    "lr_g", "lr_d", "feature_matching_weight", "reconstruction_weight", "class_mean_weight", "lr_decay_fraction",
    "perceptual_loss", "betas",
)


def spade_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SPADE_OPTIONS` among a ``train_synthesizer`` stage's ``arguments`` (its ``locals()``)."""
    return {k: arguments[k] for k in SPADE_OPTIONS}


def synthesizer_stage(
    study: StudyBase,
    generator: Factory,
    discriminator: Factory,
    dataset: Dataset,
    painter_data: Dataset,
    iterations: int,
    batch_size: int,
    options: Mapping[str, Any],
    image_channels: int = 1,
    ignore_index: int | None = None,
) -> torch.nn.Module:
    """The ``train_synthesizer`` stage of any study: `fit_synthesizer` on ``dataset`` with the stage's SPADE
    ``options`` (:data:`SPADE_OPTIONS`) -> ``models/generator.pt``, then (main process) `fit_painter` on
    ``painter_data``'s ``{"image" (Ci, *S), "label" (1, *S)}`` pairs -> ``models/painter.json``. Returns G."""
    g = fit_synthesizer(
        study, generator, discriminator, dataset, iterations, batch_size, num_classes=study.num_classes,
        ignore_index=ignore_index, **options,
    )
    on_main_process(fit_painter, study, painter_data, image_channels)
    return g


def linear_decay_schedule(
    optimizer: torch.optim.Optimizer, iterations: int, fraction: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant LR, then linear to 0 over the last ``fraction`` of ``iterations`` (stepped once per iteration)."""
    if not 0.0 < fraction <= 1.0:
        raise SynthCPInputError(f"lr_decay_fraction must be in (0, 1], got {fraction}")
    decay = max(int(round(fraction * iterations)), 1)
    start = iterations - decay
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < start else max(iterations - step, 0) / decay
    )


# ---- comparator --------------------------------------------------------------------------------------------------
def fit_comparator(
    study: StudyBase,
    name: str,
    factory: Factory,
    dataset: Dataset,
    generator: torch.nn.Module | None,
    checkpoint_dir: Path,
    iterations: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    metric: str,
    ignore_index: int | None = None,
    quality_loss: str = "l1",
    optimizer: str = "adamw",
    quality_weight: float = 1.0,
    error_weight: float = 1.0,
) -> bool:
    """Train comparator ``name`` on ``dataset``'s ``{"image", "label", "pred"}`` cross-validated predictions
    (`ComparatorTrainer`: ``x̂ = G(ŷ)`` made on the fly when the network uses it; per-class ``metric`` ("dice" or
    "iou") and error-map targets; `comparator_loss` with ``quality_loss`` and the terms' ``quality_weight`` and
    ``error_weight`` (paper eq. 8: 1 and 1); `comparator_optimizer` ``optimizer``) -> ``models/<name>.pt``.

    Every comparator of a study starts from the same seed and sample order: Direct Prediction is then exactly the
    ablation without synthesis. Returns False (nothing done) when the weights exist and ``force`` is off.
    """
    if _trained(study, name):
        return False
    offset = SEED_OFFSETS["comparator"]
    seed_stage(study, offset)
    net = study.prepare_network(factory())
    loader = train_loader(study, dataset, batch_size, int(study.seed) + offset)
    ignore = {} if ignore_index is None else {"ignore_index": ignore_index}
    loss = partial(
        comparator_loss, quality_loss=quality_loss, quality_weight=float(quality_weight),
        error_weight=float(error_weight), **ignore,
    )
    trainer = ComparatorTrainer(
        study.torch_device, loader, net, comparator_optimizer(net, lr, weight_decay, optimizer),
        num_classes=study.num_classes,
        generator=generator, metric=metric, ignore_index=ignore_index, loss_function=loss, amp=study.amp,
    )
    run_trainer(study, trainer, iterations, checkpoint_dir)
    save_network(study, name, "comparator", net, factory)
    return True


# ---- VAE alarm ---------------------------------------------------------------------------------------------------
def fit_mask_vae(
    study: StudyBase,
    factory: Factory,
    make_dataset: Callable[[], Dataset],
    checkpoint_dir: Path,
    iterations: int,
    batch_size: int,
    lr: float,
    beta: float,
) -> torch.nn.Module:
    """The VAE alarm's mask VAE (`MaskVAETrainer`: reconstruction + ``beta`` KL, Adam) on ``make_dataset()``'s
    ground-truth masks ``{"label" (1, *S)}`` -> ``models/mask_vae.pt``. Returns it unwrapped, in eval mode."""
    offset = SEED_OFFSETS["mask_vae"]
    seed_stage(study, offset)
    loader = train_loader(study, make_dataset(), batch_size, int(study.seed) + offset)
    vae = study.prepare_network(factory())
    trainer = MaskVAETrainer(
        study.torch_device, loader, vae, torch.optim.Adam(vae.parameters(), lr=lr), num_classes=study.num_classes,
        beta=beta, amp=study.amp,
    )
    run_trainer(study, trainer, iterations, checkpoint_dir)
    save_network(study, "mask_vae", "vae", vae, factory)
    return unwrap(vae).eval()


def fold_seed(study: StudyBase, fold_dir: Path) -> int:
    """The seed of cross-validation fold ``i`` (`run_crossval`'s ``fold_{i}`` folder): study seed + 1 + i."""
    return int(study.seed) + 1 + int(Path(fold_dir).name.rsplit("_", 1)[-1])
