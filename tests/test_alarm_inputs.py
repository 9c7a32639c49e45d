"""Discovery of the alarm's inputs: files, DICOM series folders, folders of either, CSV lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthcp3d.alarm.inputs import case_name, discover_inputs, is_dicom_file
from synthcp3d.errors import SynthCPInputError


def touch_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # discovery never reads voxels
    return path


def fake_dicom(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"IM{i:04d}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # no .dcm suffix: found by preamble
    return folder


def test_files_folders_dicom_and_csv(tmp_path: Path) -> None:
    a = touch_nifti(tmp_path / "data" / "a.nii.gz")
    touch_nifti(tmp_path / "data" / "b.NII")
    (tmp_path / "data" / "notes.txt").write_text("ignored")
    fake_dicom(tmp_path / "data" / "series1")
    (tmp_path / "data" / "empty_sub").mkdir()
    dicom = fake_dicom(tmp_path / "direct_series")
    (tmp_path / "list.csv").write_text("case,image\npatient 7,data/a.nii.gz\n,direct_series\n")
    cases = discover_inputs([a, tmp_path / "data", dicom, tmp_path / "list.csv", tmp_path / "gone.nii.gz"])
    assert [c.case_id for c in cases] == [
        "a",
        "a_2",
        "b",
        "series1",
        "direct_series",
        "patient_7",
        "direct_series_2",
        "gone",
    ]
    assert [c.kind for c in cases] == ["nifti", "nifti", "nifti", "dicom", "dicom", "nifti", "dicom", "nifti"]
    assert cases[5].path == tmp_path / "data" / "a.nii.gz"  # relative to the CSV's folder


def test_headerless_csv(tmp_path: Path) -> None:
    touch_nifti(tmp_path / "x.nii.gz")
    (tmp_path / "l.csv").write_text("x.nii.gz\n\nmissing.nii\n")
    assert [c.case_id for c in discover_inputs(tmp_path / "l.csv")] == ["x", "missing"]


@pytest.mark.parametrize(
    "content, needle",
    [("", "empty"), ("label,other\na,b\n", "no column"), ("image\n\n", "lists no case")],
)
def test_bad_csv(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(SynthCPInputError, match=needle):
        discover_inputs([tmp_path / "l.csv"])


def test_empty_folder_and_no_input(tmp_path: Path) -> None:
    with pytest.raises(SynthCPInputError, match="holds no .nii"):
        discover_inputs([tmp_path])
    with pytest.raises(SynthCPInputError, match="no input given"):
        discover_inputs([])


def test_names_and_dicom_sniffing(tmp_path: Path) -> None:
    assert case_name(Path("/x/Case 1.nii.gz")) == "Case_1"
    assert case_name(Path("/x/..nii")) == "case"
    (tmp_path / "plain").write_bytes(b"\0" * 200)
    assert not is_dicom_file(tmp_path / "plain")
    assert is_dicom_file(fake_dicom(tmp_path / "d", 1) / "IM0000")
