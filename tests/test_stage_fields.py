"""A study's ``stage_fields`` say which stages read a setting; the others' ``done.json`` leave it out, so changing it
reruns only those stages. A wrong listing would leave stale results in place silently, so this checks each listing
against what the stages of a tiny run actually read: every study setting a stage reads must be among the settings
its ``done.json`` records (or be a run-time or location field)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import defaultdict

import pytest
from helpers import TINY_CITYSCAPES, TINY_PANCREAS_RUN, TINY_STREETHAZARDS

import synthcp3d.workflows.common as common
from synthcp2d.data import make_cityscapes_dataset, make_streethazards_dataset
from synthcp2d.studies.cityscapes.study import CityscapesStudy
from synthcp2d.studies.streethazards import StreetHazardsStudy
from synthcp3d.data.phantom import make_pancreas_dataset
from synthcp3d.study_cli import run_study
from synthcp3d.workflows.pancreas_model import PancreasStudy

pytestmark = pytest.mark.slow  # end-to-end: not in `make test-fast`

STAGE_RUN_CODE = common.study_stage("probe")(lambda study: None).__code__  # the code of every decorated stage


def _bookkeeping(frame, study) -> bool:
    """Whether ``frame`` reads every field of ``study`` to record or copy its settings, not to use one: its
    ``describe()`` called to record the stage's inputs, or its own construction, copy, repr or comparison."""
    name = frame.f_code.co_name
    if name == "describe":
        return frame.f_back is not None and frame.f_back.f_code.co_name in ("recorded_settings", "mark_done")
    if name == "replace":  # dataclasses.replace(study, force=True) on a rerun
        return frame.f_locals.get("obj") is study
    return name in ("__init__", "__post_init__", "__repr__", "__eq__") and frame.f_locals.get("self") is study


def _record_reads(monkeypatch, study_cls) -> dict[str, set[str]]:
    """Patch ``study_cls`` to log, per running stage, the dataclass fields read on its instances."""
    fields = {f.name for f in dataclasses.fields(study_cls)}
    reads: dict[str, set[str]] = defaultdict(set)
    plain = object.__getattribute__

    def logged(self, name):
        if name in fields:
            frame = sys._getframe(1)
            while frame is not None and not _bookkeeping(frame, self):
                if frame.f_code is STAGE_RUN_CODE:
                    reads[frame.f_locals["name"]].add(name)
                    break
                frame = frame.f_back
        return plain(self, name)

    monkeypatch.setattr(study_cls, "__getattribute__", logged)
    return reads


def _check(out, study_cls, reads: dict[str, set[str]]) -> None:
    assert reads, "no stage read a study setting: the probe is broken"
    free = {*study_cls.runtime_fields, *study_cls.location_fields}
    for stage, names in reads.items():
        recorded = json.loads((out / stage / "done.json").read_text())["inputs"]["settings"]["study"]
        unrecorded = sorted(names - set(recorded) - free)
        assert not unrecorded, f"stage {stage} reads {unrecorded}, which its done.json does not record (stage_fields)"
    listed = {stage for stages in study_cls.stage_fields.values() for stage in stages}
    assert listed <= set(reads), f"stage_fields names stages that never ran: {sorted(listed - set(reads))}"


def test_streethazards_stages_record_every_setting_they_read(tmp_path, monkeypatch):
    reads = _record_reads(monkeypatch, StreetHazardsStudy)
    data = make_streethazards_dataset(
        tmp_path / "data", cases=4, seed=0, size=(64, 32), progress=False, val_cases=1, test_cases=4
    )
    run_study("streethazards", tmp_path / "out", data=data, demo=True, extra=TINY_STREETHAZARDS)
    assert "t" in reads["evaluate"] and "t" not in reads["train_segmenter"]  # the probe sees a listed field
    _check(tmp_path / "out", StreetHazardsStudy, reads)


def test_cityscapes_stages_record_every_setting_they_read(tmp_path, monkeypatch):
    reads = _record_reads(monkeypatch, CityscapesStudy)
    data = make_cityscapes_dataset(tmp_path / "data", cases=6, seed=0, size=(64, 32), val_cases=3, progress=False)
    run_study("cityscapes", tmp_path / "out", data=data, demo=True, extra=TINY_CITYSCAPES)
    assert "mc_samples" in reads["crossval"] and "vae_shape" in reads["train_baselines"]
    _check(tmp_path / "out", CityscapesStudy, reads)


def test_pancreas_stages_record_every_setting_they_read(tmp_path, monkeypatch):
    reads = _record_reads(monkeypatch, PancreasStudy)
    make_pancreas_dataset(tmp_path / "data", cases=10, seed=3, test_cases=1, shape=(48, 48, 24), progress=False)
    run_study("pancreas", tmp_path / "out", data=tmp_path / "data", device="cpu", extra={"common": TINY_PANCREAS_RUN})
    assert "mc_samples" in reads["crossval"] and "mc_samples" in reads["prepare"]  # prepare saves every setting
    _check(tmp_path / "out", PancreasStudy, reads)


def test_an_evaluation_setting_reruns_evaluate_alone(tmp_path):
    data = make_streethazards_dataset(
        tmp_path / "data", cases=4, seed=0, size=(64, 32), progress=False, val_cases=1, test_cases=4
    )
    out = tmp_path / "out"
    run_study("streethazards", out, data=data, demo=True, extra=TINY_STREETHAZARDS)
    rerun = {**TINY_STREETHAZARDS, "common": {**TINY_STREETHAZARDS["common"], "t": 0.99, "mc_samples": 3}}
    assert set(run_study("streethazards", out, data=data, demo=True, extra=rerun)) == {"evaluate"}
    assert "SynthCP (t=0.99)" in (out / "evaluate" / "report.md").read_text()
