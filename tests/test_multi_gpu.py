"""Multi-GPU training from the bundles: ``configs/multi_gpu_train.yaml`` and ``synthcp run --nproc N``.

One stage of each kind of the Cityscapes bundle, at tiny size, runs on 2 gloo processes on the CPU exactly as
``synthcp run cityscapes --nproc 2 --device cpu`` runs it (``torchrun`` per stage): the segmenters
(``train_segmenter`` and ``crossval``), the GAN (``train_synthesizer``, then resumed from its checkpoint) and the
comparators. Every file the stages write is renamed into place (atomic writes end in ``os.replace``); a
``sitecustomize`` hook logs each rename with the writer's rank, so the tests see that rank 0 alone wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import pydoc
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from helpers import TINY_CITYSCAPES

from synthcp2d.data import make_cityscapes_dataset
from synthcp3d.engines.checkpoint import load_weights
from synthcp3d.errors import SynthCPInputError
from synthcp3d.study_cli import STUDIES, _check_nproc, add_arguments, bundle_dir, run_study, stage_command
from synthcp3d.workflows.trained import build_network, load_network_spec

pytestmark = [  # end-to-end: not in `make test-fast`
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed"),
]

# the Cityscapes tiny settings, one segmenter and two comparator modes, a checkpoint every 2 iterations (resume test)
TINY = {
    **TINY_CITYSCAPES,
    "common": {**TINY_CITYSCAPES["common"], "segmenter_names": ["fcn8"], "comparator_modes": ["joint", "direct"],
               "checkpoint_every": 2},
    "train_synthesizer": {"iterations": 4, "batch_size": 2},
}

HOOK = """
import os

if os.environ.get("SYNTHCP_WRITE_LOG"):
    _replace = os.replace

    def _logged_replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        with open(os.path.join(os.environ["SYNTHCP_WRITE_LOG"], f"{os.getpid()}.log"), "a") as log:
            log.write(f"{os.environ.get('RANK', '-')}\\t{os.path.abspath(dst)}\\n")

    os.replace = _logged_replace
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """The data, then output folders after each single-process stage: ``prepare``, ``crossval``,
    ``train_synthesizer`` (what the 2-process stages start from)."""
    root = tmp_path_factory.mktemp("multi_gpu")
    data = make_cityscapes_dataset(root / "data", cases=6, seed=0, size=(64, 32), val_cases=1, progress=False)
    folders = {"data": data}
    out = root / "out"
    for stage in ("prepare", "crossval", "train_synthesizer"):
        run_study("cityscapes", out, data=data, demo=True, extra=TINY, stages=[stage], device="cpu")
        folders[stage] = shutil.copytree(out, root / f"after_{stage}")
    return folders


@pytest.fixture()
def rank_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], dict[str, set[str]]]:
    """Log the renames of the processes started in the test; returns ``writers(folder)``: path (relative to the
    folder) -> the ranks that wrote it."""
    hook, log = tmp_path / "hook", tmp_path / "writes"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SYNTHCP_WRITE_LOG", str(log))

    def writers(folder: Path) -> dict[str, set[str]]:
        folder = folder.resolve()
        found: dict[str, set[str]] = {}
        for path in log.glob("*.log"):
            for line in path.read_text().splitlines():
                rank, _, name = line.partition("\t")
                if Path(name).is_relative_to(folder):
                    found.setdefault(Path(name).relative_to(folder).as_posix(), set()).add(rank)
        return found

    return writers


def _run_two(prepared: dict[str, Path], start: str, out: Path, stages: list[str]) -> None:
    """Copy the output folder after ``start`` to ``out`` (keeping what ``out`` holds) and run ``stages`` there on 2
    processes."""
    shutil.copytree(prepared[start], out, dirs_exist_ok=True)
    timings = run_study("cityscapes", out, data=prepared["data"], demo=True, extra=TINY, stages=stages, device="cpu",
                        nproc=2)
    assert list(timings) == stages


def _load(out: Path, name: str, path: str, key: str) -> dict[str, torch.Tensor]:
    """Weights ``path`` (below ``out``) loaded into a fresh network built from ``networks.json`` (strict: no
    ``module.`` prefix); returns them."""
    net = build_network(load_network_spec(out / "models", name, "train"), name)
    load_weights({key: net}, out / path)
    return net.state_dict()


def _assert_rank0_wrote(writes: dict[str, set[str]], expected: list[str]) -> None:
    assert writes and all(ranks == {"0"} for ranks in writes.values()), {k: v for k, v in writes.items() if v != {"0"}}
    assert not [name for name in expected if name not in writes]


def test_segmenter_stages_on_two_processes(prepared, tmp_path, rank_writes):
    out = tmp_path / "out"
    _run_two(prepared, "prepare", out, ["train_segmenter", "crossval"])
    _load(out, "segmenter_fcn8", "models/segmenter_fcn8.pt", "segmenter")
    for fold in (0, 1):
        _load(out, "segmenter_fcn8", f"crossval/fcn8/fold_{fold}/segmenter.pt", "segmenter")
    cases = json.loads((out / "crossval" / "fcn8" / "cases.json").read_text())
    assert len(cases) == 6 and all(Path(r["pred"]).is_file() for r in cases.values())
    checkpoint = torch.load(out / "train_segmenter" / "checkpoints_fcn8" / "checkpoint_2.pt", weights_only=True)
    assert checkpoint["rng"]["world_size"] == 2 and checkpoint["trainer"]["iteration"] == 2
    _assert_rank0_wrote(rank_writes(out), [
        "models/segmenter_fcn8.pt", "models/networks.json", "models/mc_dropout_fcn8.json",
        "train_segmenter/done.json", "crossval/done.json", "crossval/fcn8/manifest.json", "crossval/fcn8/cases.json",
        "crossval/fcn8/fold_1/fold.json", *(f"crossval/fcn8/predictions/{c}_pred.png" for c in cases),
    ])


# Two launches of the same 2-process GAN run from the same inputs almost always end bit-identical, but not always: 2
# of ~100 launches on a 2-core machine (both in one test run) ended a few last bits apart from all the others (same
# data order and RNG states; an uninterrupted run's checkpoint at iteration 2 differed too, so resume was not the
# cause), and the GAN's Adam (beta1 = 0) turns such a difference into lr-sized steps within an iteration, so no
# tolerance separates it from a resume bug. A resume bug fails every attempt; a launch that computed differently
# passes on another (with a warning).
RESUME_ATTEMPTS = 3


def test_gan_stage_on_two_processes_resumes_exactly(prepared, tmp_path, rank_writes, capfd):
    differing: list[list[str]] = []
    for attempt in range(RESUME_ATTEMPTS):
        whole, resumed = tmp_path / f"whole_{attempt}", tmp_path / f"resumed_{attempt}"
        _run_two(prepared, "crossval", whole, ["train_synthesizer"])  # 4 iterations, checkpoints at 2 and 4
        weights = _load(whole, "generator", "models/generator.pt", "generator")
        checkpoints = whole / "train_synthesizer" / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2.pt", "checkpoint_4.pt"]
        _assert_rank0_wrote(rank_writes(whole), [
            "models/generator.pt", "models/painter.json", "models/networks.json", "train_synthesizer/done.json",
            "train_synthesizer/checkpoints/checkpoint_4.pt",
        ])

        # a run killed right after its checkpoint at iteration 2 (that same file), resumed on 2 processes
        (resumed / "train_synthesizer" / "checkpoints").mkdir(parents=True)
        shutil.copy(checkpoints / "checkpoint_2.pt", resumed / "train_synthesizer" / "checkpoints")
        capfd.readouterr()
        _run_two(prepared, "crossval", resumed, ["train_synthesizer"])
        assert "resumed from" in "".join(capfd.readouterr())
        resumed_weights = _load(resumed, "generator", "models/generator.pt", "generator")
        differing.append([name for name, value in resumed_weights.items() if not torch.equal(value, weights[name])])
        if not differing[-1]:
            if attempt:
                warnings.warn(f"2-process GAN resume matched on attempt {attempt + 1}; earlier attempts differed in "
                              f"{[d[:3] for d in differing[:-1]]}")
            return
    pytest.fail(f"resumed generator differs from the uninterrupted run's in all {RESUME_ATTEMPTS} attempts; tensors "
                f"differing per attempt (count, first 3): {[(len(d), d[:3]) for d in differing]}")


def test_comparator_stage_on_two_processes(prepared, tmp_path, rank_writes):
    out = tmp_path / "out"
    _run_two(prepared, "train_synthesizer", out, ["train_comparator"])
    for mode in ("joint", "direct"):  # with and without a synthesis input
        _load(out, f"comparator_fcn8_{mode}", f"models/comparator_fcn8_{mode}.pt", "comparator")
    _assert_rank0_wrote(rank_writes(out), ["models/comparator_fcn8_joint.pt", "models/comparator_fcn8_direct.pt",
                                           "train_comparator/done.json"])


# ---- configuration and command line (no process started) --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STUDIES))
def test_multi_gpu_config_merges_over_every_training_stage(name):
    study = STUDIES[name]
    configs = bundle_dir(study) / "configs"
    for stage in study.stages:
        parser = ConfigParser(ConfigParser.load_config_files(
            [configs / "common.yaml", configs / f"{stage}.yaml", configs / "multi_gpu_train.yaml"]
        ))
        own_run = ConfigParser.load_config_file(configs / f"{stage}.yaml")["run"]
        assert parser["run"] == own_run, stage  # the stage's own run, between initialize and finalize
        assert any("init_process_group" in e for e in parser["initialize"]), stage
        assert any("destroy_process_group" in e for e in parser["finalize"]), stage
        assert parser.get_parsed_content("dist_backend") == ("nccl" if torch.cuda.is_available() else "gloo")
        # the stages the CLI runs on N processes are those whose function trains on every rank
        assert pydoc.locate(parser["stage"]["_target_"]).training == (stage in study.training_stages), stage


def test_nproc_option():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["cityscapes", "--out", "o"]).nproc == 1
    assert parser.parse_args(["cityscapes", "--out", "o", "--nproc", "4"]).nproc == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["cityscapes", "--out", "o", "--nproc", "two"])
    for bad in (0, -1):
        with pytest.raises(SynthCPInputError, match="--nproc must be"):
            run_study("cityscapes", "unused", demo=True, device="cpu", nproc=bad)
    with pytest.raises(SynthCPInputError, match="give --device cuda"):
        _check_nproc(2, "cuda:1")
    _check_nproc(3, "cpu")  # gloo: any number of processes


def test_stage_command_with_nproc():
    bundle = bundle_dir(STUDIES["pancreas"])
    overrides = {"output_dir": "/o", "progress": False, "patch_size": [32, 32, 32], "max_cases": None}
    one = stage_command(bundle, "train_segmenter", overrides)
    assert stage_command(bundle, "train_segmenter", overrides, nproc=1) == one
    # values as Python literals: MONAI's command line (fire) reads JSON's false / null as strings
    assert [one[one.index(f"--{k}") + 1] for k in ("progress", "max_cases", "patch_size")] == ["False", "None",
                                                                                                 "[32, 32, 32]"]
    two = stage_command(bundle, "train_segmenter", overrides, nproc=2)
    assert two[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    k = one.index("--config_file") + 1
    assert two[5:] == one[1:k] + [two[k + 4]] + one[k + 1:]
    assert json.loads(two[k + 4]) == [*json.loads(one[k]), str(bundle / "configs" / "multi_gpu_train.yaml")]
