"""CT volume loading: real files shipped with nibabel/pydicom, phantoms as NIfTI and DICOM series, bad input."""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIBABEL_DATA

from synthcp3d.data.phantom import make_pancreas_case
from synthcp3d.data.volume_io import (
    CTVolume,
    affine_from_sitk,
    ct_volume_from_array,
    load_ct_volume,
    save_like,
)
from helpers import write_dicom_series
from synthcp3d.errors import SynthCPInputError

sitk = pytest.importorskip("SimpleITK")  # a dependency, but absent where the GPU check runs the CUDA tests

SHAPE = (32, 28, 10)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _affine(kind: str) -> np.ndarray:
    spacing = np.diag([0.8, 0.7, 2.5])
    if kind == "RAS":
        m = spacing
    elif kind == "LPS":
        m = np.diag([-1.0, -1.0, 1.0]) @ spacing
    else:  # oblique: rotated about a tilted axis, right-handed
        m = _rotation(np.array([0.3, 1.0, 0.4]), 0.35) @ spacing
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = [-12.5, 30.25, -410.0]
    return affine


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return make_pancreas_case(np.random.default_rng([7, 0, 0]), SHAPE).image


# --- real files shipped in installed packages -------------------------------------------------------------------


def test_nibabel_3d_nifti_loads_with_a_non_ct_warning(caplog):
    path = os.path.join(NIBABEL_DATA, "anatomical.nii")
    with caplog.at_level(logging.WARNING):
        vol = load_ct_volume(path)
    ref = nib.load(path)
    assert isinstance(vol, CTVolume) and vol.array.dtype == np.float32
    assert vol.shape == (33, 41, 25)
    np.testing.assert_allclose(vol.affine, ref.affine)
    np.testing.assert_allclose(vol.array, ref.get_fdata())
    np.testing.assert_allclose(vol.spacing, ref.header.get_zooms()[:3])
    assert any("does not look like CT in Hounsfield units" in r.message for r in caplog.records)  # an MR volume


@pytest.mark.parametrize("name", ["example4d.nii.gz", "functional.nii"])
def test_nibabel_4d_nifti_is_refused_saying_why(name):
    shape = nib.load(os.path.join(NIBABEL_DATA, name)).shape
    with pytest.raises(SynthCPInputError, match=r"4D volume \(shape .*\): give one 3D CT volume") as err:
        load_ct_volume(os.path.join(NIBABEL_DATA, name))
    assert str(tuple(shape)) in str(err.value) and "\n" not in str(err.value)


def test_nibabel_nifti_with_nan_is_refused():
    with pytest.raises(SynthCPInputError, match="NaN or infinite"):
        load_ct_volume(os.path.join(NIBABEL_DATA, "resampled_anat_moved.nii"))


def test_pydicom_ct_small_single_slice_is_refused():
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    with pytest.raises(SynthCPInputError, match="single DICOM slice .*give the folder that holds the whole series"):
        load_ct_volume(path)


def test_nibabel_two_slice_dicom_series_loads(tmp_path):
    for name in ("0.dcm", "1.dcm"):  # a real two-slice MR series shipped with nibabel
        shutil.copy(os.path.join(NIBABEL_DATA, name), tmp_path / name)
    vol = load_ct_volume(tmp_path)
    assert vol.shape == (256, 256, 2)
    assert vol.orientation == "LPS"  # its DICOM axes point left and posterior
    np.testing.assert_allclose(vol.spacing, (1.796875, 1.796875, 3.0), rtol=1e-5)


# --- phantoms: NIfTI and DICOM give the same array and affine ----------------------------------------------------


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique"])
def test_dicom_series_matches_nifti(tmp_path, phantom, kind, caplog):
    affine = _affine(kind)
    nifti = save_like(phantom, affine, tmp_path / "ct.nii.gz")
    series = write_dicom_series(phantom, affine, tmp_path / "series")
    assert len(list(series.glob("*.dcm"))) == SHAPE[2]
    with caplog.at_level(logging.WARNING):
        from_nifti = load_ct_volume(nifti)
        from_dicom = load_ct_volume(series)
    assert not caplog.records  # phantoms are HU: no range warning
    np.testing.assert_array_equal(from_nifti.array, phantom.astype(np.float32))
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.affine, affine, atol=1e-4)
    np.testing.assert_allclose(from_nifti.affine, affine, atol=1e-4)
    # ITK's own reading of the NIfTI, converted LPS -> RAS, agrees with nibabel's affine
    np.testing.assert_allclose(affine_from_sitk(sitk.ReadImage(str(nifti))), affine, atol=1e-4)


def test_left_handed_affine_series_reads_back_as_the_same_world_image(tmp_path, phantom):
    affine = _affine("RAS") @ np.diag([1.0, 1.0, -1.0, 1.0])  # slices stored head-to-feet
    vol = load_ct_volume(write_dicom_series(phantom, affine, tmp_path / "series"))
    np.testing.assert_array_equal(vol.array, phantom[:, :, ::-1])
    # voxel (i, j, k) of the read-back volume is voxel (i, j, Z-1-k) of the original, at the same world point
    ijk = np.array([3, 5, 2, 1.0])
    original = ijk.copy()
    original[2] = SHAPE[2] - 1 - ijk[2]
    np.testing.assert_allclose(vol.affine @ ijk, affine @ original, atol=1e-4)


def test_folder_with_two_series_is_refused_naming_both(tmp_path, phantom):
    a = write_dicom_series(phantom, _affine("RAS"), tmp_path / "a", series_description="AX 2.5mm")
    b = write_dicom_series(phantom[:, :, :4] + 10, _affine("LPS"), tmp_path / "b", series_description="AX bone")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src, tag in ((a, "a"), (b, "b")):
        for f in src.glob("*.dcm"):
            shutil.copy(f, mixed / f"{tag}_{f.name}")
    with pytest.raises(SynthCPInputError, match="holds 2 DICOM series") as err:
        load_ct_volume(mixed)
    message = str(err.value)
    assert "'AX 2.5mm' (10 files)" in message and "'AX bone' (4 files)" in message and "\n" not in message


def test_folder_with_one_slice_or_no_dicom_is_refused(tmp_path, phantom):
    series = write_dicom_series(phantom, _affine("RAS"), tmp_path / "s")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(series.glob("*.dcm"))[0], one / "x.dcm")
    with pytest.raises(SynthCPInputError, match="only one DICOM file.*single DICOM slice"):
        load_ct_volume(one)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthCPInputError, match="no DICOM series found"):
        load_ct_volume(empty)


# --- bad files ---------------------------------------------------------------------------------------------------


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(SynthCPInputError, match="no such file or folder"):
        load_ct_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(SynthCPInputError, match=r"empty \(0 bytes\)"):
        load_ct_volume(tmp_path / "empty.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SynthCPInputError, match="unsupported file type"):
        load_ct_volume(tmp_path / "notes.txt")


def test_truncated_and_corrupt_files_are_refused(tmp_path, phantom):
    good = save_like(phantom, _affine("RAS"), tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(SynthCPInputError, match="truncated or corrupt"):
        load_ct_volume(tmp_path / "truncated.nii.gz")
    (tmp_path / "garbage.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(SynthCPInputError, match="not a readable NIfTI file"):
        load_ct_volume(tmp_path / "garbage.nii.gz")
    header_broken = bytearray(gzip.decompress(good))
    header_broken[344:348] = b"XXXX"  # the NIfTI magic
    (tmp_path / "badmagic.nii").write_bytes(bytes(header_broken))
    with pytest.raises(SynthCPInputError, match="not a readable NIfTI file"):
        load_ct_volume(tmp_path / "badmagic.nii")


def test_header_declaring_more_voxels_than_the_file_holds_is_refused_before_reading(tmp_path, phantom):
    good = save_like(phantom, _affine("RAS"), tmp_path / "good.nii.gz")
    raw = bytearray(gzip.decompress(good.read_bytes()))
    liar = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    for shape, name in (((4000, 4000, 4000), "liar"), ((SHAPE[0], SHAPE[1], SHAPE[2] + 1), "one_slice_more")):
        liar.set_data_shape(shape)
        lie = bytes(liar.binaryblock) + bytes(raw[348:])
        (tmp_path / f"{name}.nii").write_bytes(lie)
        with pytest.raises(SynthCPInputError, match="the header declares .* more than the"):
            load_ct_volume(tmp_path / f"{name}.nii")  # exact for an uncompressed file
    (tmp_path / "liar.nii.gz").write_bytes(gzip.compress((tmp_path / "liar.nii").read_bytes()))
    with pytest.raises(SynthCPInputError, match="compressed file can hold"):  # 128 GB declared: no MemoryError
        load_ct_volume(tmp_path / "liar.nii.gz")
    (tmp_path / "one_slice_more.nii.gz").write_bytes(gzip.compress((tmp_path / "one_slice_more.nii").read_bytes()))
    with pytest.raises(SynthCPInputError, match="truncated or corrupt"):  # within the deflate bound: the read fails
        load_ct_volume(tmp_path / "one_slice_more.nii.gz")
    assert load_ct_volume(good).shape == SHAPE


def test_dimensionality_and_non_finite_voxels(tmp_path, phantom):
    affine = _affine("RAS")
    nib.save(nib.Nifti1Image(phantom[:, :, 0], affine), tmp_path / "2d.nii.gz")
    with pytest.raises(SynthCPInputError, match=r"2D image \(shape \(32, 28\)\)"):
        load_ct_volume(tmp_path / "2d.nii.gz")
    nib.save(nib.Nifti1Image(phantom[:, :, :1], affine), tmp_path / "one_slice.nii.gz")
    with pytest.raises(SynthCPInputError, match="2D image"):
        load_ct_volume(tmp_path / "one_slice.nii.gz")
    nib.save(nib.Nifti1Image(phantom[..., None], affine), tmp_path / "trailing1.nii.gz")
    assert load_ct_volume(tmp_path / "trailing1.nii.gz").shape == SHAPE  # (X, Y, Z, 1) is a 3D volume
    bad = phantom.astype(np.float32)
    bad[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(bad, affine), tmp_path / "inf.nii.gz")
    with pytest.raises(SynthCPInputError, match=r"1 voxel\(s\) are NaN or infinite"):
        load_ct_volume(tmp_path / "inf.nii.gz")


# --- writing -----------------------------------------------------------------------------------------------------


def test_save_like_round_trip_is_atomic_and_deterministic(tmp_path, phantom):
    vol = load_ct_volume(save_like(phantom, _affine("oblique"), tmp_path / "ct.nii.gz"))
    mask = vol.array > 100
    out1 = save_like(mask, vol, tmp_path / "out" / "mask.nii.gz")
    out2 = save_like(mask, vol.affine, tmp_path / "again.nii.gz")
    assert out1.read_bytes() == out2.read_bytes()
    img = nib.load(str(out1))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mask.nii.gz"]  # no temporary left behind
    with pytest.raises(SynthCPInputError, match="differs from the reference"):
        save_like(mask[:-1], vol, tmp_path / "bad.nii.gz")
    with pytest.raises(SynthCPInputError, match=r"\.nii or \.nii\.gz"):
        save_like(mask, vol, tmp_path / "bad.png")


def test_series_with_a_missing_slice_is_refused(tmp_path, phantom):
    series = write_dicom_series(phantom, _affine("oblique"), tmp_path / "s")
    sorted(series.glob("*.dcm"))[4].unlink()
    with pytest.raises(SynthCPInputError, match="not evenly spaced .*missing or duplicate slices"):
        load_ct_volume(series)


def test_in_memory_volumes_get_the_same_checks(phantom):
    torch = pytest.importorskip("torch")
    vol = ct_volume_from_array(torch.from_numpy(phantom.astype(np.float32)), _affine("LPS"))
    assert vol.shape == SHAPE and vol.orientation == "LPS" and vol.source == "<array>"
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.5))
    with pytest.raises(SynthCPInputError, match=r"<array>: 4D volume \(shape \(32, 28, 10, 2\)\)"):
        ct_volume_from_array(np.stack([phantom, phantom], -1), _affine("RAS"))
    with pytest.raises(SynthCPInputError, match="affine is missing or degenerate"):
        ct_volume_from_array(phantom, np.zeros((4, 4)))


def test_in_memory_bfloat16_volume_is_accepted(phantom, tmp_path):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(phantom.astype(np.float32)).bfloat16()  # Tensor.numpy() refuses bfloat16
    vol = ct_volume_from_array(tensor, _affine("RAS"))
    np.testing.assert_array_equal(vol.array, tensor.float().numpy())
    out = save_like(tensor > 100, vol, tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), (tensor > 100).numpy())
