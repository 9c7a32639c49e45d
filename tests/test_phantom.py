"""Synthetic pancreas CT phantoms: MSD layout, determinism, plausible HU content, orientation, errors."""

from __future__ import annotations

import filecmp
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthcp3d.data.msd import check_msd_folder, load_msd_datalist
from synthcp3d.data.phantom import (
    IN_PLANE_SPACING,
    MSD_PANCREAS_LABELS,
    SLICE_SPACINGS,
    make_pancreas_case,
    make_pancreas_dataset,
    phantom_summary,
)
from synthcp3d.data.volume_io import load_ct_volume
from synthcp3d.errors import SynthCPInputError

SMALL = (32, 32, 16)


def _files(task_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(task_dir)) for p in task_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_pancreas_dataset(
        tmp_path_factory.mktemp("a"), cases=3, seed=5, test_cases=1, shape=SMALL, progress=False
    )


def test_msd_layout_and_dataset_json(dataset):
    assert dataset.name == "Task07_Pancreas"
    assert _files(dataset) == [
        "dataset.json",
        "imagesTr/pancreas_001.nii.gz",
        "imagesTr/pancreas_002.nii.gz",
        "imagesTr/pancreas_003.nii.gz",
        "imagesTs/pancreas_004.nii.gz",
        "labelsTr/pancreas_001.nii.gz",
        "labelsTr/pancreas_002.nii.gz",
        "labelsTr/pancreas_003.nii.gz",
        "synthcp_phantom.json",
    ]
    meta = json.loads((dataset / "dataset.json").read_text())
    for key in ("name", "description", "tensorImageSize", "modality", "labels", "numTraining", "numTest"):
        assert key in meta
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == MSD_PANCREAS_LABELS == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert (meta["numTraining"], meta["numTest"]) == (3, 1)
    assert meta["training"][0] == {"image": "./imagesTr/pancreas_001.nii.gz", "label": "./labelsTr/pancreas_001.nii.gz"}
    assert meta["test"] == ["./imagesTs/pancreas_004.nii.gz"]


def test_readers_load_what_the_generator_makes(dataset):
    items = load_msd_datalist(dataset)
    assert [i["case"] for i in items] == ["pancreas_001", "pancreas_002", "pancreas_003"]
    records = {r["case"]: r for r in json.loads((dataset / "synthcp_phantom.json").read_text())["cases"]}
    for item in items:
        vol = load_ct_volume(item["image"])
        label = nib.load(item["label"])
        assert vol.shape == SMALL == label.shape
        assert nib.load(item["image"]).get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(vol.affine, label.affine)
        assert vol.orientation == records[item["case"]]["orientation"]
        np.testing.assert_allclose(vol.spacing, records[item["case"]]["spacing"])
        assert set(np.unique(np.asanyarray(label.dataobj)).tolist()) <= {0, 1, 2}
    summary = check_msd_folder(dataset, deep=True, progress=False)
    assert summary["training_cases"] == 3 and summary["test_cases"] == 1
    assert summary["cases_with_label"]["1"] == 3
    assert summary["cases_with_label"]["2"] == phantom_summary(dataset)["training_cases_with_tumour"]


def test_same_seed_gives_byte_identical_files_and_cases_do_not_depend_on_the_count(dataset, tmp_path):
    again = make_pancreas_dataset(tmp_path / "b", cases=3, seed=5, test_cases=1, shape=SMALL, progress=False)
    files = _files(dataset)
    match, mismatch, errors = filecmp.cmpfiles(dataset, again, files, shallow=False)
    assert mismatch == [] and errors == [] and match == files
    fewer = make_pancreas_dataset(tmp_path / "c", cases=2, seed=5, test_cases=0, shape=SMALL, progress=False)
    for name in ("imagesTr/pancreas_001.nii.gz", "labelsTr/pancreas_002.nii.gz"):
        assert filecmp.cmp(dataset / name, fewer / name, shallow=False)
    other = make_pancreas_dataset(tmp_path / "d", cases=1, seed=6, test_cases=0, shape=SMALL, progress=False)
    assert not filecmp.cmp(dataset / "imagesTr/pancreas_001.nii.gz", other / "imagesTr/pancreas_001.nii.gz", False)


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def test_hu_content_and_anatomy_are_plausible_in_both_orientations():
    orientations, checked = set(), 0
    for i in range(4):
        case = make_pancreas_case(np.random.default_rng([11, 0, i]), (96, 96, 48), tumour=True)
        img, lab, aff, p = case.image, case.label, case.affine, case.params
        orientations.add(p["orientation"])
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        assert img.min() == -1024 and 300 < img.max() <= 3071  # air outside the body, bone inside
        assert IN_PLANE_SPACING[0] <= p["spacing"][0] <= IN_PLANE_SPACING[1] and p["spacing"][2] in SLICE_SPACINGS
        pancreas_hu = img[lab == 1].mean()
        assert 60 < pancreas_hu < 150
        assert (lab == 2).sum() == p["tumour_voxels"] >= 1
        if p["tumour_voxels"] >= 30 and p["tumour_contrast_hu"] >= 30:  # a visible tumour: hypodense, as drawn
            checked += 1
            tumour_hu = img[lab == 2].mean()
            assert tumour_hu < pancreas_hu - 10
            assert abs(tumour_hu - (p["pancreas_hu"] - p["tumour_contrast_hu"])) < 0.5 * p["tumour_contrast_hu"] + 15
        # anatomy in world (RAS) terms, whatever the voxel order: spine posterior, pancreas anterior to it and
        # mostly on the patient's left (head right of the midline, tail to the left)
        centre = aff[:3, :3] @ ((np.array(img.shape) - 1) / 2) + aff[:3, 3]
        bone = _world(aff, img > 500).mean(0) - centre
        gland = _world(aff, lab > 0).mean(0) - centre
        assert bone[1] < -10 and gland[1] > bone[1] + 10
        assert gland[0] < bone[0]
    assert orientations == {"RAS", "LPS"} and checked >= 2


def test_tumour_share_size_and_contrast_vary():
    params = [make_pancreas_case(np.random.default_rng([3, 0, i]), (24, 24, 8)).params for i in range(40)]
    without = sum(not p["tumour"] for p in params)
    assert 1 <= without <= 12  # ~12% have no tumour
    radii = [p["tumour_radius_mm"] for p in params if "tumour_radius_mm" in p]
    contrasts = [p["tumour_contrast_hu"] for p in params if "tumour_contrast_hu" in p]
    assert min(radii) < 1.5 and max(radii) > 4 * min(radii)
    assert min(contrasts) < 15 and max(contrasts) > 60  # nearly isodense to clearly visible
    assert {p["orientation"] for p in params} == {"RAS", "LPS"}
    assert len({p["spacing"][2] for p in params}) >= 3


def test_forced_no_tumour_and_speed():
    start = time.perf_counter()
    case = make_pancreas_case(np.random.default_rng(0), (96, 96, 48), tumour=False)
    elapsed = time.perf_counter() - start
    assert not case.params["tumour"] and 2 not in case.label and (case.label == 1).sum() > 300
    assert elapsed < 2.0  # ~0.15 s on one core; generous for a shared machine


def test_bad_arguments_and_regeneration(tmp_path):
    with pytest.raises(SynthCPInputError, match="cases must be >= 1"):
        make_pancreas_dataset(tmp_path, cases=0, progress=False)
    with pytest.raises(SynthCPInputError, match="seed must be a non-negative"):
        make_pancreas_dataset(tmp_path, cases=1, seed=-1, progress=False)
    with pytest.raises(SynthCPInputError, match="shape must be"):
        make_pancreas_dataset(tmp_path, cases=1, shape=(16, 16, 4), progress=False)
    task = make_pancreas_dataset(tmp_path, cases=3, test_cases=1, shape=SMALL, progress=False)
    make_pancreas_dataset(tmp_path, cases=2, test_cases=0, shape=SMALL, progress=False)  # replaces, no stale cases
    assert [p.name for p in sorted((task / "imagesTr").iterdir())] == ["pancreas_001.nii.gz", "pancreas_002.nii.gz"]
    assert list((task / "imagesTs").iterdir()) == []
    assert json.loads((task / "dataset.json").read_text())["numTraining"] == 2
    foreign = tmp_path / "foreign"
    (foreign / "Task07_Pancreas").mkdir(parents=True)
    (foreign / "Task07_Pancreas" / "dataset.json").write_text("{}")
    with pytest.raises(SynthCPInputError, match="not written by the phantom generator"):
        make_pancreas_dataset(foreign, cases=1, shape=SMALL, progress=False)
    assert (foreign / "Task07_Pancreas" / "dataset.json").read_text() == "{}"


def test_interrupted_generation_can_be_rerun_in_place(tmp_path, monkeypatch):
    """A run killed half-way used to leave a folder without the manifest, which every rerun then refused."""
    import synthcp3d.data.phantom as phantom

    made = []

    def crash_on_second_case(*args, **kwargs):
        if made:
            raise KeyboardInterrupt
        made.append(1)
        return make_pancreas_case(*args, **kwargs)

    for _ in range(2):  # a fresh folder, then one holding a complete earlier data set
        made.clear()
        monkeypatch.setattr(phantom, "make_pancreas_case", crash_on_second_case)
        with pytest.raises(KeyboardInterrupt):
            make_pancreas_dataset(tmp_path, cases=2, test_cases=0, shape=SMALL, progress=False)
        assert not (tmp_path / "Task07_Pancreas" / "dataset.json").exists()  # incomplete is visible
        monkeypatch.undo()
        task = make_pancreas_dataset(tmp_path, cases=2, test_cases=0, shape=SMALL, progress=False)
        assert load_msd_datalist(task)[1]["case"] == "pancreas_002"
        assert "complete" not in json.loads((task / "synthcp_phantom.json").read_text())
