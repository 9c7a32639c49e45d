"""MSD Task07 folders: locating, listing through MONAI, and one-line errors for broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthcp3d.data.msd import check_msd_folder, decathlon_dataset, load_msd_datalist, resolve_task_dir
from synthcp3d.data.phantom import make_pancreas_dataset
from synthcp3d.errors import SynthCPInputError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_pancreas_dataset(
        tmp_path_factory.mktemp("msd"), cases=3, seed=1, test_cases=1, shape=(32, 32, 12), progress=False
    )


@pytest.fixture
def task(pristine, tmp_path) -> Path:
    """A private copy of the data set that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "Task07_Pancreas"))


def _edit_json(task: Path, **changes) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    meta.update(changes)
    (task / "dataset.json").write_text(json.dumps(meta))


def _rewrite_label(task: Path, case: str, data=None, affine=None) -> None:
    path = task / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def _error(root, **kwargs) -> str:
    with pytest.raises(SynthCPInputError) as err:
        check_msd_folder(root, progress=False, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_task_folder_or_parent_give_the_same_datalist(pristine):
    a = load_msd_datalist(pristine)
    b = load_msd_datalist(pristine.parent)
    assert a == b and len(a) == 3
    assert set(a[0]) == {"image", "label", "case"}
    assert a[0]["image"] == str(pristine / "imagesTr" / "pancreas_001.nii.gz")  # "./" normalised away
    assert all(Path(i["image"]).is_file() and Path(i["label"]).is_file() for i in a)
    assert load_msd_datalist(pristine, section="test") == [
        {"image": str(pristine / "imagesTs" / "pancreas_004.nii.gz"), "case": "pancreas_004"}
    ]
    with pytest.raises(SynthCPInputError, match="has no 'validation' list"):
        load_msd_datalist(pristine, section="validation")


def test_summary_shallow_and_deep(pristine):
    shallow = check_msd_folder(pristine.parent, progress=False)
    assert shallow["folder"] == str(pristine) and shallow["training_cases"] == 3 and shallow["test_cases"] == 1
    assert shallow["listed_files"] == 7 and shallow["unlisted_files"] == 0 and not shallow["deep"]
    deep = check_msd_folder(pristine, deep=True, progress=False)
    assert deep["shape_min"] == deep["shape_max"] == [32, 32, 12]
    assert sum(deep["orientations"].values()) == 3
    assert deep["cases_with_label"]["1"] == 3


def test_monai_decathlon_dataset_loads_the_folder(pristine):
    ds = decathlon_dataset(pristine, section="training", val_frac=0.0, progress=False, cache_rate=0.0)
    assert len(ds) == 3
    item = ds[0]
    assert tuple(item["image"].shape) == (32, 32, 12) == tuple(item["label"].shape)
    assert set(np.unique(item["label"].numpy()).tolist()) <= {0, 1, 2}


def test_wrong_layouts(task, tmp_path):
    assert "no such folder" in _error(tmp_path / "absent")
    assert "give its parent" in _error(task / "imagesTr")
    assert resolve_task_dir(task / "dataset.json") == task
    (tmp_path / "file.txt").write_text("x")
    assert "is a file, not a folder" in _error(tmp_path / "file.txt")
    deeper = tmp_path / "downloads"
    deeper.mkdir()
    shutil.move(str(tmp_path / "Task07_Pancreas"), deeper / "Task07_Pancreas")
    assert "one level deeper" in _error(tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(deeper / "Task07_Pancreas" / "imagesTr" / "pancreas_001.nii.gz", loose)
    assert "holds NIfTI files directly" in _error(loose)
    other = tmp_path / "other" / "Task03_Liver"
    other.mkdir(parents=True)
    (other / "dataset.json").write_text("{}")
    assert "holds Task03_Liver, not Task07_Pancreas" in _error(other.parent)


def test_missing_or_malformed_dataset_json(task):
    (task / "dataset.json").unlink()
    assert "dataset.json is missing" in _error(task.parent)
    assert "no dataset.json" in _error(task)
    (task / "dataset.json").write_text('{"training": [')
    assert "not valid JSON (line 1" in _error(task)
    (task / "dataset.json").write_text('{"labels": {"0": "background"}}')
    assert "malformed dataset.json: no 'training' list" in _error(task)
    (task / "dataset.json").write_text('{"labels": {"0": "bg"}, "training": [{"image": "a.nii.gz"}]}')
    assert "training entry 0 is not" in _error(task)
    (task / "dataset.json").write_text('{"labels": {"bg": "x"}, "training": []}')
    assert "'labels' keys must be non-negative integers" in _error(task)


def test_count_mismatch_and_missing_files(task):
    _edit_json(task, numTraining=281)
    assert "numTraining is 281 but 3 entries are listed" in _error(task)
    _edit_json(task, numTraining=3)
    (task / "labelsTr" / "pancreas_002.nii.gz").unlink()
    message = _error(task)
    assert "1 of 7 files listed in dataset.json are missing, e.g. labelsTr/pancreas_002.nii.gz" in message
    (task / "labelsTr" / "pancreas_002.nii.gz").write_bytes(b"")
    assert "empty (0 bytes)" in _error(task)


def test_macos_resource_forks_and_unlisted_files_do_not_break_the_check(task):
    (task / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # as in MSD's own archives
    shutil.copy(task / "imagesTr" / "pancreas_001.nii.gz", task / "imagesTr" / "pancreas_999.nii.gz")
    summary = check_msd_folder(task, deep=True, progress=False)
    assert summary["unlisted_files"] == 1 and summary["training_cases"] == 3


def test_deep_check_label_value_outside_declared_set(task):
    label = np.asanyarray(nib.load(str(task / "labelsTr" / "pancreas_002.nii.gz")).dataobj).copy()
    label[0, 0, 0] = 3
    _rewrite_label(task, "pancreas_002", data=label)
    assert check_msd_folder(task, progress=False)["training_cases"] == 3  # the shallow check does not read voxels
    message = _error(task, deep=True)
    assert "pancreas_002: label values [3] outside the declared set [0, 1, 2]" in message
    assert "labelsTr/pancreas_002.nii.gz" in message


def test_deep_check_shape_and_affine_mismatch_counts_every_bad_case(task):
    _rewrite_label(task, "pancreas_001", data=np.zeros((32, 32, 11), np.uint8))
    affine = nib.load(str(task / "labelsTr" / "pancreas_003.nii.gz")).affine.copy()
    affine[0, 3] += 0.5
    _rewrite_label(task, "pancreas_003", affine=affine)
    message = _error(task, deep=True)
    assert "pancreas_001: image/label shape mismatch: image (32, 32, 12), label (32, 32, 11)" in message
    assert "1 more bad case(s): pancreas_003" in message
    _rewrite_label(task, "pancreas_001", data=np.zeros((32, 32, 12), np.uint8))
    assert "pancreas_003: image/label affine mismatch (largest difference 0.5 > tolerance 0.001)" in _error(
        task, deep=True
    )
    assert check_msd_folder(task, deep=True, affine_tol=1.0, progress=False)["deep"]


def test_deep_check_non_integer_labels_and_unreadable_files(task):
    _rewrite_label(task, "pancreas_001", data=np.full((32, 32, 12), 1.5, np.float32))
    assert "label holds non-integer values [1.5]" in _error(task, deep=True)
    _rewrite_label(task, "pancreas_001", data=np.zeros((32, 32, 12), np.uint8))
    path = task / "labelsTr" / "pancreas_002.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    assert "pancreas_002: label cannot be read" in _error(task, deep=True)
