"""Stages know what they depend on: a done stage reruns when the inputs its done.json records (settings less the
run-time-only ones and the paths, the data set's listing, the run ids of the stages it reads) differ from the current
ones, in a stage and in `synthcp run`.

Three tiny stages, ``first`` -> ``second`` -> ``third``, each logging its runs in ``<out>/ran.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from synthcp3d.study_cli import STUDIES, bundle_dir, read_study, run_study
from synthcp3d.workflows.common import StudyBase, dataset_listing, stale_reason, study_stage
from synthcp3d.workflows.pancreas_model import PancreasStudy


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


@study_stage("first")
def broken(study: ToyStudy, factor: int = 2) -> dict:
    """The stage ``first`` failing half-way through a rerun."""
    raise RuntimeError("killed half-way")


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


def _forget_argument(study: ToyStudy, stage: str, name: str) -> None:
    """Rewrite ``stage``'s done.json as a synthcp whose stage had no argument ``name`` would have written it."""
    path = study.out / stage / "done.json"
    record = json.loads(path.read_text())
    inputs = record["inputs"]
    del inputs["settings"]["stage"][name]
    inputs.pop("defaults", None)  # an older done.json records none
    canonical = json.dumps(inputs["settings"], sort_keys=True, separators=(",", ":"))
    inputs["fingerprint"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(record))


def test_a_new_argument_at_its_default_reruns_nothing(study: ToyStudy, stage_log) -> None:
    """An argument added to a stage since its done.json was written is unchanged while it has its default."""
    run_all(study)
    _forget_argument(study, "second", "width")
    assert run_all(study) == []
    assert run_all(study, width=4) == ["second", "third"]
    assert "stage second: stale: settings changed (stage.width)" in stage_log.text


def test_a_study_setting_removed_since_reruns_nothing(study: ToyStudy) -> None:
    """A done.json recording a study setting synthcp no longer has (e.g. the 2D studies' num_bins) stays up to date;
    a setting the study has still counts."""
    run_all(study)
    for stage in ("first", "second", "third"):
        path = study.out / stage / "done.json"
        record = json.loads(path.read_text())
        record["inputs"]["settings"]["study"]["num_bins"] = 65536
        canonical = json.dumps(record["inputs"]["settings"], sort_keys=True, separators=(",", ":"))
        record["inputs"]["fingerprint"] = hashlib.sha256(canonical.encode()).hexdigest()
        path.write_text(json.dumps(record))
    assert run_all(study) == []
    assert run_all(replace(study, scale=2.0)) == ["first", "second", "third"]


@dataclass
class ListedToyStudy(ToyStudy):
    stage_fields: ClassVar[dict] = {"scale": ("second",)}  # read by `second` alone


def test_a_setting_listed_for_one_stage_reruns_it_and_those_after_it_only(tmp_path: Path) -> None:
    study = ListedToyStudy(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"), progress=False)
    run_all(study)
    recorded = json.loads((study.out / "first" / "done.json").read_text())["inputs"]["settings"]["study"]
    assert "scale" not in recorded and "seed" in recorded
    assert run_all(replace(study, scale=2.0)) == ["second", "third"]  # third reads second's outputs (its run id)
    assert run_all(replace(study, scale=2.0)) == []


def test_a_setting_listed_since_is_not_compared_where_the_stage_no_longer_records_it(tmp_path: Path) -> None:
    """done.json files written before the listing recorded the setting for every stage."""
    unlisted = ToyStudy(dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"), progress=False)
    run_all(unlisted)
    assert "scale" in json.loads((unlisted.out / "first" / "done.json").read_text())["inputs"]["settings"]["study"]
    listed = ListedToyStudy(dataset_dir=unlisted.dataset_dir, output_dir=unlisted.output_dir, progress=False)
    assert run_all(replace(listed, scale=2.0)) == ["second", "third"]


def test_an_interrupted_rerun_is_not_taken_as_done(study: ToyStudy) -> None:
    """A stage rerun (stale or forced) loses its old done.json first: if the rerun fails half-way, the next run
    reruns it rather than reading half-replaced outputs as finished."""
    run_all(study)
    failing = replace(study, scale=2.0)
    with pytest.raises(RuntimeError, match="half-way"):
        broken(failing)
    assert not (study.out / "first" / "done.json").is_file()
    assert run_all(failing) == ["first", "second", "third"]


# ---- the data set: by its listing (names and sizes), not by its path -------------------------------------------------
def _fake_dataset(folder: Path) -> Path:
    """A tiny data set: a description and three "volumes"."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "dataset.json").write_text('{"name": "fake"}')
    for i, size in enumerate((10, 20, 30)):
        (folder / "imagesTr" / f"case_{i}.nii.gz").write_bytes(bytes([i]) * size)
    return folder


@pytest.fixture()
def run_with_data(tmp_path: Path) -> ToyStudy:
    """A run folder holding its data set, as the demo's ``OUT/data``, every stage done."""
    run = tmp_path / "run"
    study = ToyStudy(dataset_dir=str(_fake_dataset(run / "data")), output_dir=str(run), progress=False)
    assert run_all(study) == ["first", "second", "third"]
    return study


def test_a_run_folder_copied_or_moved_with_its_data_is_up_to_date(run_with_data: ToyStudy, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run_with_data.out, copy, copy_function=shutil.copy)  # shutil.copy: new modification times
    copied = replace(run_with_data, dataset_dir=str(copy / "data"), output_dir=str(copy))
    assert all(stale_reason(copied.out / s / "done.json", f.inputs(copied)) is None for s, f in (
        ("first", first), ("second", second), ("third", third)))
    assert run_all(copied) == []
    moved = tmp_path / "moved"
    shutil.move(str(copy), moved)
    assert run_all(replace(copied, dataset_dir=str(moved / "data"), output_dir=str(moved))) == []
    link = tmp_path / "link"  # the same data reached by another path
    link.symlink_to(run_with_data.out / "data", target_is_directory=True)
    assert run_all(replace(run_with_data, dataset_dir=str(link))) == []
    assert _marker(run_with_data, "first")["inputs"]["dataset"]["files"] == 4


@pytest.mark.parametrize("change", ["add", "resize", "remove", "rename"])
def test_a_changed_listing_reruns_every_stage_naming_the_data_set(run_with_data: ToyStudy, stage_log, change) -> None:
    images = run_with_data.out / "data" / "imagesTr"
    if change == "add":
        (images / "case_3.nii.gz").write_bytes(b"x" * 5)
    elif change == "resize":
        (images / "case_1.nii.gz").write_bytes(b"x" * 21)
    elif change == "remove":
        (images / "case_1.nii.gz").unlink()
    else:
        (images / "case_1.nii.gz").rename(images / "case_9.nii.gz")
    assert run_all(run_with_data) == ["first", "second", "third"]
    expected = {
        "add": "4 files, 76 bytes -> 5 files, 81 bytes",
        "resize": "4 files, 76 bytes -> 4 files, 77 bytes",
        "remove": "4 files, 76 bytes -> 3 files, 56 bytes",
        "rename": "4 files, 76 bytes, other names or sizes",
    }[change]
    assert f"stage first: stale: settings changed (dataset listing: {expected})" in stage_log.text
    assert run_all(run_with_data) == []


def test_the_listing_reads_names_and_sizes_only(tmp_path: Path) -> None:
    """Same names and sizes, other bytes and times: the same listing (file contents are never read, by design, so
    that a folder of tens of GB lists in milliseconds)."""
    data = _fake_dataset(tmp_path / "data")
    before = dataset_listing(data)
    (data / "imagesTr" / "case_2.nii.gz").write_bytes(b"\xff" * 30)  # other bytes, same size
    os.utime(data / "dataset.json", (1, 1))
    (data / ".DS_Store").write_bytes(b"hidden")  # hidden entries are not data
    assert dataset_listing(data) == before
    assert before == {"listing": before["listing"], "files": 4, "bytes": 76}
    (data / "out").mkdir()
    (data / "out" / "done.json").write_text("{}")
    assert dataset_listing(data, exclude=[data / "out"]) == before  # an output folder inside the data folder
    assert dataset_listing(data) != before
    assert dataset_listing(tmp_path / "absent") is None


def test_a_missing_data_folder_is_recorded_as_none(tmp_path: Path, stage_log) -> None:
    study = ToyStudy(dataset_dir=str(tmp_path / "absent"), output_dir=str(tmp_path / "out"), progress=False)
    assert run_all(study) == ["first", "second", "third"]
    assert _marker(study, "first")["inputs"]["dataset"] is None
    assert run_all(study) == []
    _fake_dataset(tmp_path / "absent")
    assert run_all(study) == ["first", "second", "third"]
    assert "dataset listing: no data folder -> 4 files, 76 bytes" in stage_log.text


def test_a_done_json_recording_the_data_set_by_path_keeps_that_rule(run_with_data: ToyStudy, stage_log) -> None:
    """A done.json of the previous format (``dataset_dir`` among the settings, no listing) is up to date while the
    path and the other settings are unchanged, so that upgrading reruns nothing."""
    for stage in ("first", "second", "third"):
        path = run_with_data.out / stage / "done.json"
        record = json.loads(path.read_text())
        inputs = record["inputs"]
        del inputs["dataset"], inputs["dataset_dir"]
        inputs["settings"]["study"]["dataset_dir"] = run_with_data.dataset_dir
        canonical = json.dumps(inputs["settings"], sort_keys=True, separators=(",", ":"))
        inputs["fingerprint"] = hashlib.sha256(canonical.encode()).hexdigest()  # as the previous format computed it
        path.write_text(json.dumps(record))
    assert run_all(run_with_data) == []
    assert run_all(run_with_data, width=4) == ["second", "third"]
    assert "stage second: stale: settings changed (stage.width)" in stage_log.text
    elsewhere = run_with_data.out.parent / "data_elsewhere"
    shutil.copytree(run_with_data.out / "data", elsewhere)
    assert run_all(replace(run_with_data, dataset_dir=str(elsewhere)), width=4) == ["first", "second", "third"]
    assert "stage first: stale: settings changed (study.dataset_dir, recorded by path by an older synthcp)" in stage_log.text


# ---- paths recorded by a stage follow a moved run -------------------------------------------------------------------
@study_stage("listing")
def write_listing(study: ToyStudy) -> dict:
    """Records absolute paths as ``prepare`` does: a source file of the data set, a file of its own output."""
    (study.stage_dir("listing") / "cache.npy").write_bytes(b"cache")
    atomic = {"case": "case_0", "source": str(Path(study.dataset_dir) / "imagesTr" / "case_0.nii.gz"),
              "cache": str(study.out / "listing" / "cache.npy"), "elsewhere": "/somewhere/else.nii.gz"}
    (study.out / "listing" / "cases.json").write_text(json.dumps([atomic]))
    return {}


def test_paths_a_stage_recorded_follow_the_moved_run(run_with_data: ToyStudy, tmp_path: Path) -> None:
    write_listing(run_with_data)
    moved = tmp_path / "moved"
    shutil.move(str(run_with_data.out), moved)
    study = replace(run_with_data, dataset_dir=str(moved / "data"), output_dir=str(moved))
    raw = json.loads((moved / "listing" / "cases.json").read_text())
    assert not Path(raw[0]["cache"]).exists()  # as written: the old place, gone
    (record,) = study.resolve_paths(raw, "listing")
    assert record == {"case": "case_0", "source": str(moved / "data" / "imagesTr" / "case_0.nii.gz"),
                      "cache": str(moved / "listing" / "cache.npy"), "elsewhere": "/somewhere/else.nii.gz"}
    assert Path(record["source"]).is_file() and Path(record["cache"]).is_file()
    # the data set pointed at elsewhere: its paths follow it, not the run folder that used to hold it
    data = tmp_path / "data_elsewhere"
    shutil.copytree(moved / "data", data)
    (record,) = replace(study, dataset_dir=str(data)).resolve_paths(raw, "listing")
    assert record["source"] == str(data / "imagesTr" / "case_0.nii.gz")
    assert record["cache"] == str(moved / "listing" / "cache.npy")
    assert study.resolve_paths(raw, "no_such_stage") == raw


def _pancreas_cv(study: PancreasStudy) -> dict:
    from synthcp3d.workflows.pancreas import cv_records

    return cv_records(study)


def _cityscapes_cv(study) -> dict:
    from synthcp2d.studies.cityscapes.study import cv_records

    return cv_records(study, "fcn8")


def _street_study(**paths):
    from synthcp2d.studies.streethazards import StreetHazardsStudy

    return StreetHazardsStudy(**paths)


def _cityscapes_study(**paths):
    from synthcp2d.studies.cityscapes.study import CityscapesStudy

    return CityscapesStudy(**paths)


@pytest.mark.parametrize("make, stage, file, read", [
    (PancreasStudy, "prepare", "prepare/cases.json", lambda s: s.cases()),
    (PancreasStudy, "crossval", "crossval/cases.json", _pancreas_cv),
    (_street_study, "prepare", "prepare/cases.json", lambda s: s.cases()),
    (_cityscapes_study, "crossval", "crossval/fcn8/cases.json", _cityscapes_cv),
], ids=["pancreas-prepare", "pancreas-crossval", "street-prepare", "cityscapes-crossval"])
def test_the_studies_read_cases_json_below_the_moved_run(tmp_path: Path, make, stage, file, read) -> None:
    """The studies' readers of ``cases.json`` read a moved run's own preprocessed volumes, caches, predictions and
    source files (`StudyBase.resolve_paths`)."""
    run, moved = tmp_path / "run", tmp_path / "moved"
    old = make(dataset_dir=str(run / "data"), output_dir=str(run), progress=False)
    cases = {"p1": {"image": str(run / stage / "p1_image.nii.gz"), "source_label": str(run / "data" / "p1.nii.gz"),
                    "fold": 0, "shape": [4, 4, 4]}}
    (run / file).parent.mkdir(parents=True)
    (run / file).write_text(json.dumps(cases))
    old.mark_done(stage, {}, 0.0, {})
    shutil.move(str(run), moved)
    new = replace(old, dataset_dir=str(moved / "data"), output_dir=str(moved))
    assert read(new) == {"p1": {"image": str(moved / stage / "p1_image.nii.gz"),
                                "source_label": str(moved / "data" / "p1.nii.gz"), "fold": 0, "shape": [4, 4, 4]}}


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
