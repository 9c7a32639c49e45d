"""Every training stage's augmentation and schedule settings reach the code that uses them (issue #10: every
hyperparameter reachable from the bundle config). Each stage body runs (``__wrapped__``: no done-marker) until
the setting's point of use, where a stand-in records it; nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd, RandShiftIntensityd

from synthcp3d.errors import SynthCPInputError
from synthcp3d.transforms import segmenter_train_augmentation
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.pancreas_model import VAE_CROP_MARGIN, PancreasStudy


class Reached(Exception):
    """Raised by a stand-in once the setting under test has arrived."""


def _raise(*args, **kwargs):
    raise Reached


def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


# ---- pancreas ------------------------------------------------------------------------------------------------------
@pytest.fixture
def pancreas(tmp_path: Path) -> PancreasStudy:
    """A pancreas study with ``prepare/cases.json`` and ``crossval/cases.json`` of two cases (paths only)."""
    study = PancreasStudy(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"), progress=False)
    cases = {c: {"image": f"{c}_image.nii.gz", "label": f"{c}_label.nii.gz"} for c in ("a", "b")}
    _write(study.out / "prepare" / "cases.json", {"train": ["a", "b"], "test": [], "folds": [["a"], ["b"]],
                                                 "cases": cases})
    cv = {c: {**r, "pred": f"{c}_pred.nii.gz", "true_dsc": [1.0, 0.5, 0.0]} for c, r in cases.items()}
    _write(study.out / "crossval" / "cases.json", cv)
    return study


def test_segmenter_augmentation_settings_reach_its_transforms() -> None:
    chain = segmenter_train_augmentation((8, 8, 8), flip_prob=0.1, intensity_shift=0.2, intensity_shift_prob=0.3)
    flip = next(t for t in chain.transforms if isinstance(t, RandFlipd))
    shift = next(t for t in chain.transforms if isinstance(t, RandShiftIntensityd))
    assert (flip.prob, shift.prob, shift.shifter.offsets) == (0.1, 0.3, (-0.2, 0.2))
    default = segmenter_train_augmentation((8, 8, 8))  # today's values
    assert [t.prob for t in default.transforms if isinstance(t, (RandFlipd, RandShiftIntensityd))] == [0.5, 0.5]


@pytest.mark.parametrize("stage", ["train_segmenter", "crossval"])
def test_pancreas_segmenter_augmentation_reaches_the_patches(pancreas, monkeypatch, stage: str) -> None:
    import synthcp3d.workflows.pancreas as wf

    seen = {}

    def augmentation(*args, **kwargs):
        seen.update(kwargs)
        raise Reached

    monkeypatch.setattr(wf, "segmenter_train_augmentation", augmentation)
    monkeypatch.setattr(wf, "fit_segmenter", lambda study, factory, dataset, *args, **kwargs: dataset())
    monkeypatch.setattr(wf, "run_crossval", lambda cases, k, out, train_fold, *a, **kw: train_fold(cases, out / "fold_0"))
    with pytest.raises(Reached):
        getattr(wf, stage).__wrapped__(pancreas, None, flip_prob=0.1, intensity_shift=0.2, intensity_shift_prob=0.3)
    assert {k: seen[k] for k in ("flip_prob", "intensity_shift", "intensity_shift_prob")} == {
        "flip_prob": 0.1, "intensity_shift": 0.2, "intensity_shift_prob": 0.3}


@pytest.mark.parametrize("stage", ["train_synthesizer", "train_comparator"])
def test_pancreas_roi_crops_flip_with_the_stage_setting(pancreas, monkeypatch, stage: str) -> None:
    import synthcp3d.workflows.pancreas_judges as wf

    probs = []

    def flip(keys, prob, spatial_axis):
        probs.append(prob)
        raise Reached

    monkeypatch.setattr(wf, "RandFlipd", flip)
    with pytest.raises(Reached):
        getattr(wf, stage).__wrapped__(pancreas, *([None] * (2 if stage == "train_synthesizer" else 3)),
                                       flip_prob=0.25)
    assert probs == [0.25]


def test_the_vae_alarm_crop_margin_and_flip_reach_training_and_its_regressor(pancreas, monkeypatch) -> None:
    """``crop_margin`` crops the ground-truth masks and the CV predictions and is recorded with the regressor;
    ``flip_prob`` flips the masks."""
    import synthcp3d.workflows.pancreas_judges as wf

    margins, probs, recorded = [], [], []

    def vae_input(study, mask, margin=VAE_CROP_MARGIN):
        margins.append(margin)
        return torch.zeros(1, 3, 4, 4, 4)

    class Flip:
        def __init__(self, keys, prob, spatial_axis):
            probs.append(prob)

        def __call__(self, data):
            return data

    def fit_regressor(study, vae, masks, true, path, feature, record):
        list(masks)
        recorded.append(record)
        return np.zeros((len(true), 3))

    monkeypatch.setattr(wf, "vae_input", vae_input)
    monkeypatch.setattr(wf, "load_volume", lambda path: np.zeros((4, 4, 4)))
    monkeypatch.setattr(wf, "RandFlipd", Flip)
    monkeypatch.setattr(wf, "fit_mask_vae", lambda study, factory, masks, *args: masks() and None)
    monkeypatch.setattr(wf, "fit_vae_alarm_regressor", fit_regressor)
    wf.train_vae_alarm.__wrapped__(pancreas, None, crop_margin=5, flip_prob=0.25)
    assert margins == [5] * 4 and probs == [0.25] and recorded == [{"vae_crop_margin": 5}]  # 2 masks, 2 CV preds
    with pytest.raises(SynthCPInputError, match="crop_margin"):
        wf.train_vae_alarm.__wrapped__(pancreas, None, crop_margin=-1)


def test_scoring_crops_with_the_margin_the_vae_alarm_recorded(pancreas, monkeypatch) -> None:
    """evaluate, inference and the alarm read the margin from ``vae_alarm_regressor.json`` (absent: the default)."""
    import synthcp3d.workflows.pancreas_scoring as scoring
    from synthcp3d.scoring.regression import LinearQualityRegressor
    from synthcp3d.workflows.pancreas_model import load_regressor
    from synthcp3d.workflows.protocol_judges import fit_quality_regressor

    regressor, _ = fit_quality_regressor(LinearQualityRegressor(3), np.random.default_rng(0).random((4, 3)),
                                         np.random.default_rng(1).random((4, 3)))
    path = pancreas.models / "vae_alarm_regressor.json"
    atomic_save_json({**regressor.state_dict(), "vae_feature": "loss"}, path)
    assert load_regressor(pancreas, "vae_alarm").vae_crop_margin == VAE_CROP_MARGIN == 2  # folders from before
    atomic_save_json({**regressor.state_dict(), "vae_feature": "loss", "vae_crop_margin": 5}, path)
    loaded = load_regressor(pancreas, "vae_alarm")
    margins = []

    def vae_input(study, mask, margin=VAE_CROP_MARGIN):
        margins.append(margin)
        raise Reached

    monkeypatch.setattr(scoring, "vae_input", vae_input)
    with pytest.raises(Reached):
        scoring.vae_alarm_dsc(pancreas, None, loaded, np.zeros((4, 4, 4), dtype=np.int64))
    assert margins == [5]


# ---- 2D studies --------------------------------------------------------------------------------------------------
def test_case_dataset_flips_with_the_given_probability() -> None:
    from synthcp2d.studies.common import case_dataset

    def flips(dataset):
        return [t.prob for t in dataset.transform.transforms if isinstance(t, RandFlipd)]

    assert flips(case_dataset([])) == [0.5] and flips(case_dataset([], 0.2)) == [0.2] and flips(case_dataset([], 0)) == []


@pytest.fixture
def street_data(tmp_path: Path, monkeypatch) -> dict:
    """``case_dataset`` of the 2D studies recording its ``flip_prob``; a ``prepare/cases.json`` of two cases."""
    import synthcp2d.studies.cityscapes.training as training
    import synthcp2d.studies.common as common

    flips: list = []

    def case_dataset(records, flip_prob=0.5, with_pred=False):
        flips.append(flip_prob)
        return "dataset"

    for module in (common, training):
        monkeypatch.setattr(module, "case_dataset", case_dataset)
    monkeypatch.setattr(common, "fit_segmenter", lambda study, factory, dataset, *a, **k: dataset() and _raise())
    monkeypatch.setattr(common, "train_loader", _raise)
    monkeypatch.setattr(common, "synthesizer_stage", _raise)
    records = [{"case": c, "cache": f"{c}.npz"} for c in ("a", "b")]
    _write(tmp_path / "out" / "prepare" / "cases.json", {"train": records, "val": [], "folds": [["a"], ["b"]]})
    return {"paths": {"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "progress": False},
            "flips": flips}


def _street(paths):
    from synthcp2d.studies.streethazards import StreetHazardsStudy

    return StreetHazardsStudy(**paths)


def _cityscapes(paths):
    from synthcp2d.studies.cityscapes.study import CityscapesStudy

    return CityscapesStudy(**paths)


@pytest.mark.parametrize("stage", ["street.train_segmenter", "common.train_synthesizer", "common.train_autoencoder",
                                   "cityscapes.train_segmenter", "cityscapes.crossval", "cityscapes.train_comparator"])
def test_2d_stages_flip_their_training_images_with_the_stage_setting(street_data, monkeypatch, stage: str) -> None:
    import synthcp2d.studies.cityscapes.training as training
    import synthcp2d.studies.common as common
    import synthcp2d.studies.streethazards as street

    module, name = stage.split(".")
    fn = getattr({"street": street, "common": common, "cityscapes": training}[module], name).__wrapped__
    make = _cityscapes if module == "cityscapes" else _street
    study = make(street_data["paths"])
    modes = {"joint": None, "separate": None, "direct": None}
    networks = {"train_synthesizer": [None, None], "train_autoencoder": [torch.nn.Identity],
                "train_comparator": [modes, None]}.get(name, [None])
    monkeypatch.setattr(training, "segmenter_factories", lambda segmenters, study: {"fcn8": None})
    monkeypatch.setattr(training, "run_crossval", lambda cases, k, out, train_fold, *a, **kw: train_fold(cases, out / "fold_0"))
    monkeypatch.setattr(training, "load_network", lambda *args: None)
    monkeypatch.setattr(training, "cv_records", lambda study, name: {"a": {"cache": "a.npz", "pred": "a.png"}})
    monkeypatch.setattr(training, "fit_comparator", _raise)
    with pytest.raises(Reached):
        fn(study, *networks, flip_prob=0.25)
    assert street_data["flips"][0] == 0.25
    if name == "train_synthesizer":
        assert street_data["flips"] == [0.25, 0.0]  # the painter fits on unflipped images


def test_confidnet_flips_with_the_stage_setting(street_data, monkeypatch) -> None:
    import synthcp2d.studies.common as common

    seen = {}

    def fit_supervised(*args, flip_prob, **kwargs):
        seen["flip_prob"] = flip_prob
        raise Reached

    monkeypatch.setattr(common, "_fit_supervised", fit_supervised)
    with pytest.raises(Reached):
        common.fit_confidnet(_cityscapes(street_data["paths"]), torch.nn.Identity(), torch.nn.Identity, [],
                             Path(street_data["paths"]["output_dir"]), "confidnet_fcn8", 1, 1, 1e-3, flip_prob=0.25)
    assert seen == {"flip_prob": 0.25}


@pytest.mark.parametrize("vae, expected", [({}, (7, 3)), ({"vae_iterations": 11, "vae_batch_size": 5}, (11, 5))])
def test_cityscapes_tcp_and_vae_schedules_are_separate(street_data, monkeypatch, vae, expected) -> None:
    """``iterations`` / ``batch_size`` train the TCP heads, and the mask VAE unless ``vae_iterations`` /
    ``vae_batch_size`` are given."""
    import synthcp2d.studies.cityscapes.training as training

    seen = {}

    def fit_confidnet(study, seg, head, records, out, name, iterations, batch_size, lr, flip_prob):
        seen["tcp"] = (iterations, batch_size, flip_prob)

    def fit_mask_vae(study, factory, masks, out, iterations, batch_size, lr, beta):
        seen["vae"] = (iterations, batch_size)
        raise Reached

    monkeypatch.setattr(training, "segmenter_factories", lambda segmenters, study: {"fcn8": None})
    monkeypatch.setattr(training, "load_network", lambda *args: None)
    monkeypatch.setattr(training, "feature_channels", lambda seg, study: 4)
    monkeypatch.setattr(training, "fit_confidnet", fit_confidnet)
    monkeypatch.setattr(training, "fit_mask_vae", fit_mask_vae)
    with pytest.raises(Reached):
        training.train_baselines.__wrapped__(_cityscapes(street_data["paths"]), None, torch.nn.Identity, None,
                                             iterations=7, batch_size=3, flip_prob=0.25, **vae)
    assert seen == {"tcp": (7, 3, 0.25), "vae": expected}


# ---- the bundles ---------------------------------------------------------------------------------------------------
_FLIP = {"flip_prob": 0.5}
_PATCHES = {**_FLIP, "intensity_shift": 0.05, "intensity_shift_prob": 0.5}


@pytest.mark.parametrize("study, stage, expected", [
    ("pancreas", "train_segmenter", _PATCHES),
    ("pancreas", "crossval", _PATCHES),
    ("pancreas", "train_synthesizer", _FLIP),
    ("pancreas", "train_comparator", _FLIP),
    ("pancreas", "train_vae_alarm", {**_FLIP, "crop_margin": 2}),
    ("cityscapes", "train_segmenter", _FLIP),
    ("cityscapes", "crossval", _FLIP),
    ("cityscapes", "train_synthesizer", _FLIP),
    ("cityscapes", "train_comparator", _FLIP),
    ("cityscapes", "train_baselines", {**_FLIP, "vae_iterations": None, "vae_batch_size": None}),
    ("streethazards", "train_segmenter", _FLIP),
    ("streethazards", "train_synthesizer", _FLIP),
    ("streethazards", "train_autoencoder", _FLIP),
])
def test_the_bundle_configs_set_each_setting_at_its_default(tmp_path: Path, study: str, stage: str, expected) -> None:
    """The stage's config hands it each setting, at the function's default (so no existing run goes stale)."""
    import inspect

    from monai.bundle import ConfigParser

    from synthcp3d.study_cli import STUDIES, bundle_dir

    bundle = bundle_dir(STUDIES[study])
    parser = ConfigParser()
    parser.read_config(f=[str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / f"{stage}.yaml")])
    parser.update(pairs={"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "device": "cpu"})
    configured = parser.get_parsed_content("stage")
    defaults = {k: p.default for k, p in inspect.signature(configured.func).parameters.items()}
    assert {k: configured.keywords[k] for k in expected} == expected == {k: defaults[k] for k in expected}


def _cityscapes_segmenter_factories(overrides: dict) -> dict:
    """The Cityscapes bundle's ``segmenters`` factories (FCN-8, DeepLab-v2) with ``overrides`` on common.yaml."""
    from monai.bundle import ConfigParser

    from synthcp3d.study_cli import STUDIES, bundle_dir

    parser = ConfigParser()
    parser.read_config(bundle_dir(STUDIES["cityscapes"]) / "configs" / "common.yaml")
    parser.update(overrides)
    return {name: parser.get_parsed_content(f"segmenters#{name}") for name in ("fcn8", "deeplabv2")}


@pytest.mark.parametrize("stem_stride", [None, 1])
def test_cityscapes_segmenter_stem_stride_reaches_both_segmenters(stem_stride) -> None:
    """``--set segmenters#<name>#stem_stride=1`` sets the ResNet stem of FCN-8 and DeepLab-v2 (MONAI's nested key);
    the bundle itself passes no stem_stride (the paper's stride 2), so runs recorded before the option stay current."""
    from synthcp3d.workflows.records import describe_factory

    overrides = {"segmenter_layers": [1, 1, 1, 1], "segmenter_channels": [4, 4, 8, 8], "fcn_width": 8}
    if stem_stride is not None:
        overrides.update({f"segmenters#{name}#stem_stride": stem_stride for name in ("fcn8", "deeplabv2")})
    for factory in _cityscapes_segmenter_factories(overrides).values():
        assert describe_factory(factory).get("stem_stride") == stem_stride
        assert factory().body.encoder.net.conv1.stride == (stem_stride or 2,) * 2


def test_cityscapes_study_profile_builds_output_stride_4_segmenters() -> None:
    """``--demo --profile study`` reaches the networks it names: both ResNet stems without stride, the doubled widths,
    DeepLab-v2's ASPP rates scaled to its grid; its iterations win over the demo's, the folds half of them (half the
    images)."""
    from synthcp3d.study_cli import STUDIES, stage_overrides

    overrides = {
        stage: stage_overrides("cityscapes", stage, {}, demo=True, extra={}, profile="study")
        for stage in ("train_segmenter", "crossval")
    }
    demo = STUDIES["cityscapes"].demo_settings
    assert overrides["train_segmenter"]["iterations"] > demo["train_segmenter"]["iterations"]
    assert overrides["crossval"]["iterations"] * 2 == overrides["train_segmenter"]["iterations"]
    fcn8, deeplab = (factory() for factory in _cityscapes_segmenter_factories(overrides["train_segmenter"]).values())
    for net in (fcn8, deeplab):
        assert net.body.encoder.net.conv1.stride == (1, 1)
        assert net.body.encoder.net.conv1.out_channels == 32
    assert [b.conv.dilation for b in deeplab.classifier.branches] == [(r, r) for r in (2, 4, 6, 8)]
    x = torch.zeros(1, 3, 64, 128)
    assert deeplab(x).shape == fcn8(x).shape == (1, 19, 64, 128)
