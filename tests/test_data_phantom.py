"""Synthetic pancreas CT phantoms: MSD layout, determinism, HU content, orientation, physical scale, errors."""

from __future__ import annotations

import filecmp
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import synthcp3d.data.phantom_anatomy as anatomy
from synthcp3d.data.msd import check_msd_folder, load_msd_datalist
from synthcp3d.data.phantom import MSD_PANCREAS_LABELS, make_pancreas_case, make_pancreas_dataset, phantom_summary
from synthcp3d.data.phantom_anatomy import FOV_CRANIOCAUDAL_MM, FOV_IN_PLANE_MM
from synthcp3d.data.volume_io import load_ct_volume
from synthcp3d.errors import SynthCPInputError

SMALL = (32, 32, 16)
DEFAULT = (128, 128, 48)


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


def _check_field_of_view(p: dict) -> None:
    """Spacing = physical field of view / shape, the field of view within its drawn ranges."""
    fov = np.array(p["spacing"]) * np.array(p["shape"])
    np.testing.assert_allclose(fov, p["fov_mm"], atol=0.06)
    assert FOV_IN_PLANE_MM[0] - 0.1 <= fov[0] <= FOV_IN_PLANE_MM[1] + 0.1 and abs(fov[0] - fov[1]) < 0.2
    assert FOV_CRANIOCAUDAL_MM[0] - 0.1 <= fov[2] <= FOV_CRANIOCAUDAL_MM[1] + 0.1


def test_hu_content_and_anatomy_are_plausible_in_both_orientations():
    orientations, checked = set(), 0
    for i in range(4):
        case = make_pancreas_case(np.random.default_rng([11, 0, i]), DEFAULT, tumour=True)
        img, lab, aff, p = case.image, case.label, case.affine, case.params
        orientations.add(p["orientation"])
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        assert img.min() < -950 and 300 < img.max() <= 3071  # air outside the body, bone inside
        _check_field_of_view(p)
        assert 1.7 < p["spacing"][0] < 2.05 and 2.2 < p["spacing"][2] < 2.75  # CT-like voxels at the default shape
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
        spine_i = int(np.argmax((img > 500).sum((1, 2))))  # the column with the most bone: the spine (ribs are cut)
        spine_x = (aff[:3, :3] @ [spine_i, 0, 0] + aff[:3, 3])[0] - centre[0]
        assert gland[0] < spine_x
    assert orientations == {"RAS", "LPS"} and checked >= 2


def test_tumour_share_size_and_contrast_vary():
    params = [make_pancreas_case(np.random.default_rng([3, 0, i]), (24, 24, 8)).params for i in range(40)]
    without = sum(not p["tumour"] for p in params)
    assert 1 <= without <= 12  # ~12% have no tumour
    assert all(p["tumour_voxels"] >= 1 for p in params if p["tumour"])  # even a sub-voxel tumour keeps one voxel
    diameters = [p["tumour_diameter_mm"] for p in params if "tumour_diameter_mm" in p]
    contrasts = [p["tumour_contrast_hu"] for p in params if "tumour_contrast_hu" in p]
    assert len(diameters) == 40 - without
    assert min(diameters) < 15 and max(diameters) > 35  # 1-5 cm, log-uniform
    assert min(contrasts) < 15 and max(contrasts) > 60  # nearly isodense to clearly visible
    assert {p["orientation"] for p in params} == {"RAS", "LPS"}
    for p in params:
        _check_field_of_view(p)
    assert np.ptp([p["fov_mm"][0] for p in params]) > 15 and np.ptp([p["fov_mm"][2] for p in params]) > 10


def test_physical_scale_of_the_recorded_anatomy():
    """A real-size patient: the drawn sizes (independent of the voxel shape) are adult anatomy."""
    params = [make_pancreas_case(np.random.default_rng([21, 0, i]), (48, 48, 24)).params for i in range(30)]
    width = [p["abdomen_width_mm"] for p in params]
    length = [p["pancreas_length_mm"] for p in params]
    head = [p["pancreas_head_diameter_mm"] for p in params]
    tumour = [p["tumour_diameter_mm"] for p in params if p["tumour"]]
    assert 280 <= min(width) and max(width) <= 380  # adult abdomen 300-400 mm across
    assert all(220 <= p["abdomen_ap_mm"] <= 265 for p in params)
    assert 120 <= min(length) and max(length) <= 200  # pancreas 12-20 cm
    assert 25 <= min(head) and max(head) <= 35  # head 2.5-3.5 cm
    assert all(15 <= p["pancreas_body_thickness_mm"] <= 25 for p in params)
    assert 10 <= min(tumour) and max(tumour) <= 50  # PDAC 1-5 cm
    assert 0 < sum(not p["tumour"] for p in params) / len(params) <= 0.3
    assert np.ptp(width) > 30 and np.ptp(length) > 30 and np.ptp(tumour) > 20  # they vary


def test_label_map_has_real_size_and_the_gland_is_inside_the_field_of_view():
    for i in range(4):
        case = make_pancreas_case(np.random.default_rng([23, 0, i]), DEFAULT, tumour=True)
        lab, spacing = case.label, case.params["spacing"]
        xs = np.nonzero((lab > 0).any((1, 2)))[0]
        assert (xs[-1] - xs[0] + 1) * spacing[0] >= 80  # the gland spans 8+ cm left to right
        for axis in range(3):  # the whole gland and tumour are inside the volume, never at its border
            assert not np.take(lab, [0, lab.shape[axis] - 1], axis=axis).any()
        tumour_mm3 = (lab == 2).sum() * float(np.prod(spacing))
        assert 7 <= (6 * tumour_mm3 / np.pi) ** (1 / 3) <= 60  # equivalent-sphere diameter
        pancreas_mm3 = (lab == 1).sum() * float(np.prod(spacing))
        assert 15e3 < pancreas_mm3 < 150e3  # adult pancreas ~60-100 cm3


def test_same_patient_at_two_shapes():
    """The anatomy is physical: a coarser shape is the same patient at coarser voxels."""
    fine = make_pancreas_case(np.random.default_rng([29, 0, 4]), DEFAULT)
    coarse = make_pancreas_case(np.random.default_rng([29, 0, 4]), (64, 64, 24))
    for key in ("abdomen_width_mm", "pancreas_length_mm", "tumour", "tumour_diameter_mm", "noise_hu"):
        assert fine.params.get(key) == coarse.params.get(key), key
    np.testing.assert_allclose(fine.params["fov_mm"], coarse.params["fov_mm"], atol=0.1)  # spacing rounded to 1 um
    assert coarse.params["spacing"][0] == pytest.approx(2 * fine.params["spacing"][0], abs=0.002)

    def volume(case, labels):
        return np.isin(case.label, labels).sum() * float(np.prod(case.params["spacing"]))

    assert volume(coarse, [1]) == pytest.approx(volume(fine, [1]), rel=0.15)
    assert volume(coarse, [1, 2]) == pytest.approx(volume(fine, [1, 2]), rel=0.15)
    world = lambda c: _world(c.affine, c.label > 0).mean(0)  # noqa: E731
    assert np.abs(world(coarse) - world(fine)).max() < 3.0  # mm: at the same place in the world


def _tumour_voxels_at_2mm(case) -> int:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    label = MetaTensor(torch.from_numpy(case.label[None].astype(np.float32)), affine=torch.from_numpy(case.affine))
    label = Orientation("RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(label)
    resampled = Spacing(pixdim=(2.0, 2.0, 2.5), mode="nearest")(label)
    np.testing.assert_allclose(np.abs(np.diag(resampled.affine.numpy())[:3]), [2.0, 2.0, 2.5])
    return int((resampled == 2).sum())


def test_small_tumours_survive_resampling_to_the_training_grid(monkeypatch):
    diameters = []
    for i in range(10):
        case = make_pancreas_case(np.random.default_rng([31, 0, i]), DEFAULT)
        if case.params["tumour"]:
            diameters.append(case.params["tumour_diameter_mm"])
            assert _tumour_voxels_at_2mm(case) >= 10
    assert len(diameters) >= 6 and min(diameters) < 15  # the draws include small tumours
    monkeypatch.setattr(anatomy, "TUMOUR_DIAMETER_MM", (10.0, 10.0))  # the smallest tumour the generator makes
    for i in range(3):
        case = make_pancreas_case(np.random.default_rng([37, 0, i]), DEFAULT, tumour=True)
        assert case.params["tumour_diameter_mm"] == 10.0 and case.params["tumour_voxels"] >= 30
        assert _tumour_voxels_at_2mm(case) >= 10


def test_forced_no_tumour_and_speed():
    start = time.perf_counter()
    case = make_pancreas_case(np.random.default_rng(0), DEFAULT, tumour=False)
    elapsed = time.perf_counter() - start
    assert not case.params["tumour"] and 2 not in case.label and (case.label == 1).sum() > 2000
    assert "tumour_diameter_mm" not in case.params
    assert elapsed < 2.0  # ~0.05 s on one core; generous for a shared machine


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
