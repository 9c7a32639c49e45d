"""Studies are described by their bundles (configs/study.yaml), found by scanning the bundles folder."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import yaml

from synthcp3d.errors import SynthCPInputError
from synthcp3d.study_cli import STUDIES, bundle_dir, discover_studies, read_study, stage_overrides


def _copy(name: str, root: Path) -> Path:
    return Path(shutil.copytree(bundle_dir(STUDIES[name]), root / STUDIES[name].bundle))


def test_every_stage_of_every_study_has_its_config() -> None:
    for study in STUDIES.values():
        configs = bundle_dir(study) / "configs"
        assert study.stages and all((configs / f"{s}.yaml").is_file() for s in study.stages), study.name
        assert set(study.training_stages) <= set(study.stages) and study.report_stage in study.stages
        for role in ("maker", "checker"):  # the data set functions `synthcp run --demo` and `synthcp data` import
            module, _, name = study.demo_data[role].partition(":")
            assert callable(getattr(importlib.import_module(module), name)), (study.name, role)


def test_a_copied_bundle_is_found_under_synthcp_bundles(tmp_path: Path, monkeypatch) -> None:
    _copy("streethazards", tmp_path)
    monkeypatch.setenv("SYNTHCP_BUNDLES", str(tmp_path))
    found = discover_studies()
    assert list(found) == ["streethazards"] and found["streethazards"] == STUDIES["streethazards"]


def test_demo_overrides_merge_in_order() -> None:
    """base < demo common < demo stage < profile < --set: the study profile's iterations win over the demo's."""
    base = {"output_dir": "/o", "iterations": 7}
    demo = stage_overrides("pancreas", "train_segmenter", base, demo=True, extra={})
    assert demo["iterations"] == STUDIES["pancreas"].demo_settings["train_segmenter"]["iterations"]
    assert demo["spacing"] == STUDIES["pancreas"].demo_settings["common"]["spacing"] and demo["output_dir"] == "/o"
    profile = stage_overrides("pancreas", "train_segmenter", base, demo=True, extra={}, profile="study")
    assert profile["iterations"] == STUDIES["pancreas"].demo_profiles["study"]["train_segmenter"]["iterations"]
    chosen = stage_overrides("pancreas", "train_segmenter", base, demo=True, profile="study",
                             extra={"train_segmenter": {"iterations": 3}})
    assert chosen["iterations"] == 3
    assert stage_overrides("pancreas", "train_segmenter", base, demo=False, extra={}) == base


def test_set_names_a_stage_or_a_nested_key_with_hash(tmp_path: Path) -> None:
    """``a.b=v`` means stage ``a``; a dotted config path is refused (it was silently dropped), ``a#b`` reaches the
    config entry through MONAI's own override syntax."""
    from monai.bundle import ConfigParser

    from synthcp3d.study_cli import _parse_overrides, run_study

    extra = _parse_overrides(["segmenter_recipe.lr_decay=poly"])
    assert extra == {"segmenter_recipe": {"lr_decay": "poly"}}
    with pytest.raises(SynthCPInputError, match="not a stage of streethazards.*segmenter_recipe#lr_decay"):
        run_study("streethazards", tmp_path / "out", demo=True, extra=extra)
    assert not (tmp_path / "out").exists()  # refused before any data was generated

    extra = _parse_overrides(["segmenter_recipe#lr_decay=poly", "train_segmenter.iterations=5"])
    assert extra == {"common": {"segmenter_recipe#lr_decay": "poly"}, "train_segmenter": {"iterations": 5}}
    parser = ConfigParser()
    parser.read_config(bundle_dir(STUDIES["streethazards"]) / "configs" / "common.yaml")
    parser.update(extra["common"])
    assert parser.get_parsed_content("segmenter_recipe")["lr_decay"] == "poly"
    assert parser.get_parsed_content("segmenter_recipe")["include_background"] is True  # the rest kept


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda spec: spec.pop("stages"), "not a readable study description"),
        (lambda spec: spec["stages"].append("no_such_stage"), "no_such_stage"),
        (lambda spec: spec.update(report_stage="elsewhere"), "elsewhere"),
    ],
)
def test_a_broken_study_description_is_refused_in_one_line(tmp_path: Path, edit, message) -> None:
    bundle = _copy("streethazards", tmp_path)
    path = bundle / "configs" / "study.yaml"
    spec = yaml.safe_load(path.read_text())
    edit(spec)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SynthCPInputError, match=message) as info:
        read_study(bundle)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["unet", "deeplabv2", "fcn8"])
def test_streethazards_segmenter_options_follow_its_name(name: str) -> None:
    """One config entry per segmenter kind (``segmenter_options[segmenter_name]``); the demo picks the full-resolution
    UNet with median-frequency class weights, and every kind builds at demo size with full-size logits."""
    import torch
    from monai.bundle import ConfigParser

    from synthcp3d.workflows.protocol import SegmenterRecipe

    study = STUDIES["streethazards"]
    parser = ConfigParser()
    parser.read_config(bundle_dir(study) / "configs" / "common.yaml")
    parser.update({**study.demo_settings["common"], "segmenter_name": name,
                   "segmenter_layers": [1, 1, 1, 1], "segmenter_channels": [8, 8, 16, 16]})
    net = parser.get_parsed_content("segmenter")()
    assert (type(net.body).__name__ == "BasicUNet") == (name == "unet")
    logits = net.eval()(torch.zeros(1, 3, *reversed(study.demo_settings["common"]["image_size"])))
    assert logits.shape == (1, 13, 64, 128)
    assert study.demo_settings["common"]["segmenter_name"] == "unet"
    assert SegmenterRecipe.of(parser.get_parsed_content("segmenter_recipe")).class_weights == "median_frequency"
