"""Keeping a trained network and loading it back (`synthcp3d.workflows.trained`): one way for 2D and 3D."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks.baseline_heads import ConfidNetHead
from synthcp3d.networks.synthesizer import SPADEGenerator
from synthcp3d.workflows.common import StudyBase
from synthcp3d.workflows.trained import load_network, save_network


@dataclass
class _Study(StudyBase):
    num_classes: int = 3


def _generator(spatial_dims: int, num_classes: int = 3) -> partial:
    return partial(SPADEGenerator, spatial_dims=spatial_dims, num_classes=num_classes, out_channels=1,
                   channels=[8, 4], spade_hidden_channels=4)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_kept_network_loads_with_or_without_its_factory(tmp_path, spatial_dims):
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    factory = _generator(spatial_dims)
    torch.manual_seed(0)
    net = factory()
    save_network(study, "generator", "generator", net, factory)
    for given in (factory, None):  # the config's factory, or networks.json alone
        loaded = load_network(study, "generator", "generator", "train_synthesizer", given)
        assert type(loaded) is SPADEGenerator and not loaded.training and _equal(loaded, net)
    fold = study.out / "fold_0.pt"  # weights kept elsewhere (a CV fold's), the same spec
    (study.models / "generator.pt").rename(fold)
    assert _equal(load_network(study, "generator", "generator", "crossval", weights=fold), net)


def test_a_head_built_from_its_segmenter_keeps_its_width_in_networks_json(tmp_path):
    """ConfidNet's factory is the config's with the segmenter's feature width added: both are in the spec."""
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    factory = partial(partial(ConfidNetHead, spatial_dims=2, hidden=[4]), feature_channels=6)
    head = factory()
    save_network(study, "confidnet_fcn8", "confidnet", head, factory)
    loaded = load_network(study, "confidnet_fcn8", "confidnet", "train_baselines")
    assert loaded.net[0].conv.in_channels == 6 and _equal(loaded, head)


def test_load_errors_name_the_file_and_the_stage(tmp_path):
    study = _Study(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    factory = _generator(2)
    with pytest.raises(SynthCPInputError, match="networks.json is missing: run the train_synthesizer stage"):
        load_network(study, "generator", "generator", "train_synthesizer")
    with pytest.raises(SynthCPInputError, match="generator.pt are absent: run the train_synthesizer stage first"):
        load_network(study, "generator", "generator", "train_synthesizer", factory)
    save_network(study, "generator", "generator", factory(), factory)
    with pytest.raises(SynthCPInputError, match="describes no 'comparator' network: run the train_comparator"):
        load_network(study, "comparator", "comparator", "train_comparator")
    with pytest.raises(SynthCPInputError, match="label count differs: network 'generator' has 4 classes, the study has 3"):
        load_network(study, "generator", "generator", "train_synthesizer", _generator(2, num_classes=4))
    wider = partial(SPADEGenerator, **{**factory.keywords, "channels": [16, 4]})
    with pytest.raises(SynthCPInputError, match="do not fit network 'generator'"):
        load_network(study, "generator", "generator", "train_synthesizer", wider)
    with pytest.raises(SynthCPInputError, match=r"lacks \['vae'\]"):
        load_network(study, "generator", "vae", "train_synthesizer", factory)
