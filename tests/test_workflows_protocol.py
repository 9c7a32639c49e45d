"""The stage bodies every study shares (`synthcp3d.workflows.protocol`): one body for 2D and 3D."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet

from synthcp3d.engines.checkpoint import load_weights
from synthcp3d.engines.segmentation import SegmentationLoss
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.workflows.common import StudyBase
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.segmenters import build_segmenter
from synthcp3d.workflows import protocol
from synthcp3d.workflows.protocol import SegmenterRecipe, fit_segmenter, fold_seed, median_frequency_weights
from synthcp3d.workflows.protocol_judges import fit_quality_regressor


@dataclass
class _Study(StudyBase):
    num_classes: int = 3


def _segmenter(spatial_dims: int) -> torch.nn.Module:
    return BasicUNet(spatial_dims=spatial_dims, in_channels=1, out_channels=3, features=(4, 4, 4, 4, 4, 4))


def _samples(spatial_dims: int, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    shape = (32,) * spatial_dims
    out = []
    for _ in range(n):
        label = rng.integers(0, 3, size=(1, *shape))
        out.append({"image": torch.as_tensor(label / 2.0, dtype=torch.float32), "label": torch.as_tensor(label)})
    return out


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fit_segmenter_trains_saves_and_reloads_in_both_dims(tmp_path: Path, spatial_dims: int) -> None:
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path), progress=False, checkpoint_every=100)
    built = []

    def dataset() -> Dataset:
        built.append(1)
        return Dataset(_samples(spatial_dims))

    weights = tmp_path / "seg.pt"
    factory = lambda: _segmenter(spatial_dims)  # noqa: E731
    recipe = {"include_background": False, "batch_dice": True, "class_weights": [1, 1, 3], "lr_decay": "poly"}
    net = fit_segmenter(study, factory, dataset, tmp_path / "ckpt", weights, 3, 2, 1e-2, seed=5, recipe=recipe)
    assert not net.training and weights.is_file() and built == [1]
    untrained = factory()
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), untrained.state_dict().values()))

    again = fit_segmenter(study, factory, dataset, tmp_path / "ckpt", weights, 3, 2, 1e-2, seed=5, recipe=recipe)
    assert built == [1]  # loaded: the dataset is not even built
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    reference = factory()
    load_weights({"segmenter": reference}, weights)
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), net.state_dict().values()))


def test_segmentation_loss_with_an_ignore_label_keeps_the_recipe() -> None:
    """With no pixel ignored, the masked loss is MONAI's DiceCELoss with the same options; ignored pixels count
    for nothing, whatever the logits there."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 7)
    label = torch.randint(0, 3, (2, 1, 6, 7))
    options = {"include_background": False, "batch": True}
    ours = SegmentationLoss(ignore_index=255, class_weights=[1.0, 2.0, 3.0], **options)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, weight=torch.tensor([1.0, 2.0, 3.0]), **options)
    assert torch.allclose(ours(logits, label), ref(logits, label), atol=1e-6)

    ignored = label.clone()
    ignored[:, :, :2] = 255
    changed = logits.clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 7) * 10
    assert torch.allclose(ours(logits, ignored), ours(changed, ignored), atol=1e-6)
    assert not torch.allclose(ours(logits, label), ours(changed, label))


def test_recipe_from_config_mapping() -> None:
    assert SegmenterRecipe.of(None) == SegmenterRecipe()
    recipe = SegmenterRecipe.of({"batch_dice": True})
    assert recipe.batch_dice and SegmenterRecipe.of(recipe) is recipe


def test_median_frequency_weights_by_hand() -> None:
    """f_c = pixels of c / valid pixels of the maps holding c; w_c = median(f) / f_c; 255 not counted; a class no map
    holds gets 1. Maps: [0, 0, 255, 1] (3 valid pixels) and [0, 2, 2, 2] (4): f = (3/7, 1/3, 3/4), median 3/7."""
    maps = [np.array([[0, 0, 255, 1]]), torch.tensor([[0, 2, 2, 2]])]
    assert median_frequency_weights(maps, 4) == pytest.approx([1.0, 9 / 7, 4 / 7, 1.0])
    # a class in every pixel of one map only is frequent there: its weight does not fall with the other maps' size
    assert median_frequency_weights([np.zeros((1, 4)), np.ones((1, 400))], 2) == pytest.approx([1.0, 1.0])
    with pytest.raises(SynthCPInputError, match="no class"):
        median_frequency_weights([np.full((2, 2), 255)], 3)


def test_fit_segmenter_balances_classes_on_its_training_labels(tmp_path: Path, monkeypatch) -> None:
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path), progress=False, checkpoint_every=100)
    samples = _samples(2)
    for s in samples:  # make class 2 rare
        s["label"][s["label"] == 2] = 0
        s["label"][0, :2, :2] = 2
    seen = []

    class _Recording(SegmentationLoss):
        def __init__(self, **kwargs) -> None:
            seen.append(kwargs["class_weights"])
            super().__init__(**kwargs)

    monkeypatch.setattr(protocol, "SegmentationLoss", _Recording)
    recipe = {"class_weights": "median_frequency"}
    fit_segmenter(study, lambda: _segmenter(2), lambda: Dataset(samples), tmp_path / "ckpt", tmp_path / "seg.pt", 2, 2,
                  1e-2, seed=5, recipe=recipe, num_classes=3)
    expected = median_frequency_weights([s["label"] for s in samples], 3)
    assert seen == [pytest.approx(expected)] and expected[2] > 10 * expected[0]
    # patch sampling (RandCropByPosNegLabeld & co.) gives a list of samples per item: each patch counts
    pairs = [[samples[i], samples[i + 1]] for i in (0, 2)]
    study.force = True
    fit_segmenter(study, lambda: _segmenter(2), lambda: Dataset(pairs), tmp_path / "ckpt3", tmp_path / "seg.pt", 2, 2,
                  1e-2, seed=5, recipe=recipe, num_classes=3)
    assert seen[-1] == pytest.approx(expected)
    # counting does not move the run's random stream (dropout draws from it): the same run given the weights as a
    # list trains the same net
    with_dropout = lambda: build_segmenter("unet", 2, 1, 3, dropout=0.5, features=(4,) * 6)  # noqa: E731
    balanced = fit_segmenter(study, with_dropout, lambda: Dataset(samples), tmp_path / "ckpt4",
                             tmp_path / "a.pt", 2, 2, 1e-2, seed=5, recipe=recipe, num_classes=3)
    listed = fit_segmenter(study, with_dropout, lambda: Dataset(samples), tmp_path / "ckpt5",
                           tmp_path / "b.pt", 2, 2, 1e-2, seed=5, recipe={"class_weights": expected}, num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(balanced.state_dict().values(), listed.state_dict().values()))
    with pytest.raises(SynthCPInputError, match="class count"):
        fit_segmenter(study, lambda: _segmenter(2), lambda: Dataset(samples), tmp_path / "ckpt2", tmp_path / "seg.pt",
                      2, 2, 1e-2, seed=5, recipe=recipe)
    with pytest.raises(SynthCPInputError, match="median_frequency"):
        SegmenterRecipe.of({"class_weights": "inverse"})


def test_fold_seed_follows_the_fold_folder(tmp_path: Path) -> None:
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path), seed=7)
    assert [fold_seed(study, tmp_path / f"fold_{i}") for i in (0, 1, 12)] == [8, 9, 20]


def test_fit_quality_regressor_fills_an_unfit_class_with_its_mean() -> None:
    feats = np.array([[0.1, 0.2, np.nan], [0.3, 0.5, np.nan], [0.6, 0.9, np.nan]])
    true = np.array([[0.9, 0.2, np.nan], [0.7, 0.4, 0.5], [0.4, 0.8, np.nan]])
    regressor, unfit = fit_quality_regressor(LinearQualityRegressor(3), feats, true)
    assert unfit == [2]
    assert regressor.coef[2] == 0.0 and regressor.intercept[2] == pytest.approx(0.5)
    slope, intercept = np.polyfit(feats[:, 1], true[:, 1], 1)  # an independent least-squares fit
    assert regressor.coef[1] == pytest.approx(slope) and regressor.intercept[1] == pytest.approx(intercept)


def test_every_train_synthesizer_stage_hands_on_the_spade_options() -> None:
    """`spade_options` picks the stage arguments `fit_synthesizer` takes: both studies' stages have each of them."""
    import inspect

    from synthcp2d.studies.common import train_synthesizer as street_stage
    from synthcp3d.workflows.pancreas_judges import train_synthesizer as pancreas_stage
    from synthcp3d.workflows.protocol import SPADE_OPTIONS, fit_synthesizer, spade_options

    assert set(SPADE_OPTIONS) <= set(inspect.signature(fit_synthesizer).parameters)
    for stage in (street_stage, pancreas_stage):
        parameters = inspect.signature(stage).parameters
        defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
        assert spade_options(defaults) == {k: inspect.signature(fit_synthesizer).parameters[k].default
                                           for k in SPADE_OPTIONS}


def test_fit_synthesizer_uses_the_configured_perceptual_loss(tmp_path: Path) -> None:
    """A bundle's ``perceptual_loss`` (e.g. `LocalPerceptualLoss`) reaches the GAN's generator step."""
    from synthcp3d.networks.synthesizer import SPADEGenerator, build_discriminator
    from synthcp3d.workflows.protocol import fit_synthesizer

    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path), progress=False, checkpoint_every=100)
    calls = []

    def perceptual(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(fake.shape), fake.requires_grad))
        return (fake - real).abs().mean()

    g = fit_synthesizer(
        study, lambda: SPADEGenerator(2, 3, 1, channels=(4, 4), spade_hidden_channels=4),
        lambda: build_discriminator(2, 3, 1, num_d=1, num_layers_d=1, channels=4),
        Dataset(_samples(2, n=2)), iterations=2, batch_size=2, num_classes=3, perceptual_loss=perceptual,
    )
    assert len(calls) == 2 and calls[0] == ((2, 1, 32, 32), True)  # once per generator step, with gradients
    assert (tmp_path / "models" / "generator.pt").is_file() and isinstance(g, SPADEGenerator)


def test_the_study_amp_setting_reaches_every_trainer(tmp_path: Path, monkeypatch) -> None:
    """``amp`` (a bundle's ``common.yaml``) is handed to the segmenter, GAN, comparator and mask-VAE trainers, the
    synthesizer's configured Adam ``betas`` to both GAN optimizers, the recipe's ``lr_power`` to the segmenter's
    poly schedule and the comparator's ``quality_weight`` / ``error_weight`` to its loss."""
    import synthcp3d.workflows.protocol as protocol
    from synthcp3d.networks import build_comparator
    from synthcp3d.networks.mask_vae import MaskVAE
    from synthcp3d.networks.synthesizer import SPADEGenerator, build_discriminator

    class Built(Exception):
        pass

    seen, losses = {}, []

    def recorder(name: str):
        def build(*args, **kwargs):
            seen[name] = kwargs.get("amp")
            if name == "GanTrainer":  # (device, loader, G, D, opt_g, opt_d, ...): the configured betas reach both
                seen["betas"] = [tuple(opt.param_groups[0]["betas"]) for opt in args[4:6]]
            if name == "SegmenterTrainer":
                seen["lr_power"] = kwargs["lr_scheduler"].power
            if name == "ComparatorTrainer":
                losses.append(kwargs["loss_function"])
            raise Built  # nothing to train: the constructor's arguments are the point

        return build

    trainers = ("SegmenterTrainer", "GanTrainer", "ComparatorTrainer", "MaskVAETrainer")
    for name in trainers:
        monkeypatch.setattr(protocol, name, recorder(name))
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path), progress=False, amp=True)
    data = Dataset(_samples(2, n=2))
    calls = [
        lambda: protocol.fit_segmenter(study, lambda: _segmenter(2), lambda: data, tmp_path / "s", tmp_path / "s.pt",
                                       1, 2, 1e-3, seed=0, recipe={"lr_decay": "poly", "lr_power": 0.5}),
        lambda: protocol.fit_synthesizer(study, lambda: SPADEGenerator(2, 3, 1, channels=(4, 4)),
                                         lambda: build_discriminator(2, 3, 1, num_d=1, num_layers_d=1, channels=4),
                                         data, 1, 2, num_classes=3, betas=[0.5, 0.99]),
        lambda: protocol.fit_comparator(study, "comparator", lambda: build_comparator("direct", spatial_dims=2,
                                        image_channels=1, num_classes=3), data, None, tmp_path / "c", 1, 2, 1e-3,
                                        0.0, "dice", quality_weight=2.0, error_weight=0.25),
        lambda: protocol.fit_mask_vae(study, lambda: MaskVAE(2, 3, (32, 32)), lambda: data, tmp_path / "v", 1, 2,
                                      1e-3, 1e-3),
    ]
    for call in calls:
        with pytest.raises(Built):
            call()
    assert seen == {**{name: True for name in trainers}, "betas": [(0.5, 0.99), (0.5, 0.99)], "lr_power": 0.5}
    outputs = {"quality": torch.tensor([[0.2, 0.9]]), "error_logits": torch.zeros(1, 1, 4, 4)}
    targets = torch.tensor([[0.5, 0.5]]), torch.ones(1, 4, 4)
    total, parts = losses[0](outputs, *targets)
    assert total == pytest.approx(2.0 * float(parts["quality_l1"]) + 0.25 * float(parts["error_bce"]))
