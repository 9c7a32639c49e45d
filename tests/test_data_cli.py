"""``synthcp data make|check`` run in-process: exit codes, printed summaries, one-line errors, 2D dispatch."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from synthcp3d.cli import main

SHAPE_ARGS = ["--shape", "32", "32", "12"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in err


def test_make_then_check_pancreas(tmp_path, capsys):
    code, out, _ = _run(
        capsys, "data", "make", "pancreas", "--out", str(tmp_path), "--cases", "2", "--seed", "4",
        "--test-cases", "1", "--no-progress", *SHAPE_ARGS,
    )  # fmt: skip
    assert code == 0
    task = tmp_path / "Task07_Pancreas"
    assert "wrote 2 training + 1 test phantom cases (32x32x12 voxels" in out and str(task) in out
    assert "tumour in" in out
    assert len(list((task / "imagesTr").glob("*.nii.gz"))) == 2
    code, out, _ = _run(capsys, "data", "check", "pancreas", str(tmp_path), "--deep", "--json", "--no-progress")
    assert code == 0
    summary = json.loads(out)
    assert summary["training_cases"] == 2 and summary["shape_max"] == [32, 32, 12]
    code, out, _ = _run(capsys, "data", "check", "pancreas", str(task))
    assert code == 0 and "training_cases" in out and "Task07_Pancreas" in out


def test_bad_input_prints_one_error_line(tmp_path, capsys):
    code, _, err = _run(capsys, "data", "check", "pancreas", str(tmp_path / "absent"))
    _assert_one_line_error(code, err, "no such folder")
    (tmp_path / "Task07_Pancreas").mkdir()
    code, _, err = _run(capsys, "data", "check", "pancreas", str(tmp_path))
    _assert_one_line_error(code, err, "dataset.json is missing")
    (tmp_path / "Task07_Pancreas" / "x").write_text("not ours")
    code, _, err = _run(capsys, "data", "make", "pancreas", "--out", str(tmp_path), "--cases", "1", "--no-progress")
    _assert_one_line_error(code, err, "not written by the phantom generator")
    code, _, err = _run(capsys, "data", "make", "pancreas", "--out", str(tmp_path / "n"), "--cases", "0")
    _assert_one_line_error(code, err, "cases must be >= 1")
    code, _, err = _run(capsys, "data", "make", "cityscapes", "--out", str(tmp_path), "--test-cases", "3")
    _assert_one_line_error(code, err, "--test-cases applies to the pancreas data set only")


@pytest.fixture
def fake_2d(monkeypatch, tmp_path):
    """Stand-ins for the 2D generators/readers, recording how the CLI calls them."""
    calls: list[tuple] = []

    def make(name):
        def _make(out_dir, cases, seed, progress=True):
            calls.append((name, "make", Path(out_dir), cases, seed, progress))
            return Path(out_dir) / name

        return _make

    def check(name):
        def _check(root):
            calls.append((name, "check", Path(root)))
            if not Path(root).exists() and "missing" in str(root):
                from synthcp3d.errors import SynthCPInputError

                raise SynthCPInputError(f"{root}: no such folder.")
            return {"root": str(root), "images": 5}

        return _check

    modules = {
        "synthcp2d.data.synthetic_cityscapes": {"make_cityscapes_dataset": make("cityscapes")},
        "synthcp2d.data.synthetic_streethazards": {"make_streethazards_dataset": make("streethazards")},
        "synthcp2d.data.cityscapes": {"check_cityscapes_folder": check("cityscapes")},
        "synthcp2d.data.streethazards": {"check_streethazards_folder": check("streethazards")},
    }
    for name, attrs in modules.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    return calls


@pytest.mark.parametrize("dataset", ["cityscapes", "streethazards"])
def test_2d_data_sets_dispatch_to_synthcp2d(fake_2d, tmp_path, capsys, dataset):
    code, out, _ = _run(capsys, "data", "make", dataset, "--out", str(tmp_path), "--cases", "3", "--seed", "9")
    assert code == 0
    assert fake_2d[0] == (dataset, "make", tmp_path, 3, 9, True)
    assert fake_2d[1] == (dataset, "check", tmp_path / dataset)
    assert f"wrote a synthetic {dataset} data set (3 cases, seed 9)" in out and "images" in out
    code, out, _ = _run(capsys, "data", "check", dataset, str(tmp_path / dataset), "--json")
    assert code == 0 and json.loads(out) == {"root": str(tmp_path / dataset), "images": 5}
    code, _, err = _run(capsys, "data", "check", dataset, str(tmp_path / "missing"))
    _assert_one_line_error(code, err, "no such folder")
