"""Stages know what they depend on: a done stage reruns when the inputs its done.json records (settings less the
run-time-only ones, the run ids of the stages it reads) differ from the current ones, in a stage and in `synthcp run`.

Three tiny stages, ``first`` -> ``second`` -> ``third``, each logging its runs in ``<out>/ran.jsonl``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from synthcp3d.study_cli import STUDIES, bundle_dir, read_study, run_study
from synthcp3d.workflows.common import StudyBase, study_stage


@dataclass
class ToyStudy(StudyBase):
    scale: float = 1.0
    cache_size: int = 0

    runtime_fields: ClassVar[tuple[str, ...]] = (*StudyBase.runtime_fields, "cache_size")


def toy_net(width: int = 2) -> list[int]:
    """A stand-in network factory."""
    return [0] * width


def _log_run(study: ToyStudy, stage: str) -> dict:
    with open(study.stage_dir(stage).parent / "ran.jsonl", "a") as log:
        log.write(json.dumps({"stage": stage, "force": study.force}) + "\n")
    return {}


@study_stage("first")
def first(study: ToyStudy, factor: int = 2) -> dict:
    return _log_run(study, "first")


@study_stage("second", after=("first",))
def second(study: ToyStudy, width: int = 3) -> dict:
    return _log_run(study, "second")


@study_stage("third", after=("second",))
def third(study: ToyStudy, net=partial(toy_net, width=2)) -> dict:
    return _log_run(study, "third")


def _runs(out: Path) -> list[dict]:
    log = out / "ran.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def run_all(study: ToyStudy, width: int = 3) -> list[str]:
    """Run the three stages in order; the stages that ran."""
    before = len(_runs(study.out))
    first(study)
    second(study, width=width)
    third(study)
    return [r["stage"] for r in _runs(study.out)[before:]]


@pytest.fixture()
def study(tmp_path: Path) -> ToyStudy:
    return ToyStudy(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"), progress=False)


@pytest.fixture()
def stage_log(caplog):
    caplog.set_level(logging.INFO, logger="synthcp3d.workflows.common")
    return caplog


def _marker(study: ToyStudy, stage: str) -> dict:
    return json.loads((study.out / stage / "done.json").read_text())


def test_a_second_run_skips_every_stage(study: ToyStudy) -> None:
    assert run_all(study) == ["first", "second", "third"]
    assert run_all(study) == []
    assert _marker(study, "second")["inputs"]["after"] == {"first": _marker(study, "first")["run_id"]}
    assert _marker(study, "third")["inputs"]["settings"]["stage"]["net"] == {"_target_": f"{__name__}.toy_net", "width": 2}


def test_forcing_an_upstream_stage_reruns_every_stage_after_it(study: ToyStudy, stage_log) -> None:
    run_all(study)
    first(replace(study, force=True))
    assert run_all(study) == ["second", "third"]
    assert "stage second: stale: upstream first ran again" in stage_log.text
    assert "stage third: stale: upstream second ran again" in stage_log.text
    assert all(r["force"] for r in _runs(study.out)[-2:])  # a stale stage must not reuse its own earlier outputs
    assert run_all(study) == []


def test_a_result_setting_reruns_a_stage_a_run_time_one_does_not(study: ToyStudy, stage_log) -> None:
    run_all(study)
    run_time = replace(study, device="cuda:1", progress=True, checkpoint_every=7, num_workers=3, cache_size=9)
    assert run_all(run_time) == []
    assert run_all(study, width=4) == ["second", "third"]
    assert "stage second: stale: settings changed (stage.width)" in stage_log.text
    assert run_all(replace(study, scale=2.0), width=4) == ["first", "second", "third"]
    assert "stage first: stale: settings changed (study.scale)" in stage_log.text


def test_a_done_json_of_the_older_format_reruns(study: ToyStudy, stage_log) -> None:
    run_all(study)
    old = {"stage": "first", "seconds": 0.1, "settings": study.describe()}  # what the older mark_done wrote
    (study.out / "first" / "done.json").write_text(json.dumps(old))
    assert run_all(study) == ["first", "second", "third"]
    assert "stage first: stale: its done.json records no inputs" in stage_log.text


# ---- the runner: `synthcp run` on a bundle of the three stages ------------------------------------------------------
def _toy_bundle(root: Path) -> Path:
    configs = root / "toy_bundle" / "configs"
    configs.mkdir(parents=True)
    for name in ("metadata.json", "logging.conf"):
        shutil.copy(bundle_dir(STUDIES["pancreas"]) / "configs" / name, configs / name)
    common = {
        "dataset_dir": ".", "output_dir": "./out", "device": "cpu", "seed": 0, "force": False, "progress": False,
        "scale": 1.0, "cache_size": 0,
        "study": {"_target_": f"{__name__}.ToyStudy", **{k: f"@{k}" for k in (
            "dataset_dir", "output_dir", "device", "seed", "force", "progress", "scale", "cache_size")}},
    }
    stages = {"first": {}, "second": {"width": 3}, "third": {}}
    for stage, args in stages.items():
        target = {"_target_": f"{__name__}.{stage}", "_mode_": "callable", "study": "@study"}
        config = {**args, "stage": {**target, **{k: f"@{k}" for k in args}}, "run": ["$@stage()"]}
        (configs / f"{stage}.yaml").write_text(yaml.safe_dump(config))
    (configs / "common.yaml").write_text(yaml.safe_dump(common))
    (configs / "study.yaml").write_text(yaml.safe_dump({"name": "toy", "stages": list(stages), "report_stage": "third"}))
    return configs.parent


def test_synthcp_run_skips_and_reruns_by_the_same_rule(tmp_path: Path, monkeypatch, capsys) -> None:
    bundle = _toy_bundle(tmp_path / "bundles")
    monkeypatch.setenv("SYNTHCP_BUNDLES", str(bundle.parent))
    monkeypatch.setitem(STUDIES, "toy", read_study(bundle))
    run = partial(run_study, "toy", tmp_path / "out", data=tmp_path, device="cpu")
    assert list(run()) == ["first", "second", "third"]
    assert run(extra={"common": {"cache_size": 5, "progress": True}}) == {}
    assert "[second] complete" in capsys.readouterr().out
    assert list(run(stages=["first"], force=True)) == ["first"]
    assert list(run()) == ["second", "third"]
    assert "[second] stale: upstream first ran again since; rerunning" in capsys.readouterr().out
    assert list(run(extra={"second": {"width": 5}})) == ["second", "third"]
    assert "[second] stale: settings changed (stage.width); rerunning" in capsys.readouterr().out
    assert run(extra={"second": {"width": 5}}) == {}
