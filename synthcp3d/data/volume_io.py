"""Reading one CT volume from a user's path (NIfTI file or DICOM series folder) and writing results beside it.

Everything is expressed in nibabel's convention: an ``(X, Y, Z)`` array in the file's own voxel order and a 4x4
affine mapping voxel indices to RAS+ world millimetres. DICOM (and ITK) work in LPS+, so the SimpleITK path converts
with ``diag(-1, -1, 1)``; a NIfTI and a DICOM series of the same data therefore load to the same array and affine.
Bad input is refused here, at the boundary, with a one-line :class:`~synthcp3d.errors.SynthCPInputError`.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.arrays import to_numpy
from synthcp3d.utils.atomic import atomic_path

try:
    import SimpleITK as sitk
except ImportError:  # NIfTI needs only nibabel; machines without SimpleITK (the GPU check's) still read and write it
    sitk = None

__all__ = [
    "CTVolume",
    "load_ct_volume",
    "ct_volume_from_array",
    "save_like",
    "affine_from_sitk",
    "sitk_geometry_from_affine",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# LPS (DICOM/ITK) <-> RAS (NIfTI/nibabel): flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A CT in Hounsfield units has air near -1000 (padding down to -3024), soft tissue around 0-100 and bone up to a
# few thousand; a little metal may go higher, so the upper test uses the 99th percentile, not the maximum.
_HU_PLAUSIBLE_MIN = (-3100.0, -500.0)  # the volume minimum should lie in this range
_HU_PLAUSIBLE_P99 = (0.0, 3100.0)  # and the 99th percentile in this one
_READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, ImageFileError, HeaderDataError, RuntimeError)


@dataclass
class CTVolume:
    """One checked CT volume, read from disk by :func:`load_ct_volume` or wrapped by :func:`ct_volume_from_array`.

    Attributes:
        array: float32 intensities, shape ``(X, Y, Z)`` in the file's voxel order (no reorientation).
        affine: float64 ``(4, 4)`` voxel -> RAS+ world (mm) matrix, nibabel convention.
        source: the path it was read from.
        spacing: voxel size in mm along the three array axes (column norms of the affine).
    """

    array: np.ndarray
    affine: np.ndarray
    source: str
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes, e.g. ``"RAS"`` or ``"LPS"`` (nibabel's ``aff2axcodes``)."""
        return "".join(nib.aff2axcodes(self.affine))


def load_ct_volume(path: str | os.PathLike) -> CTVolume:
    """Load one 3D CT volume from a NIfTI file, a DICOM series folder, or an ITK image file (.mha/.nrrd).

    Refuses (``SynthCPInputError``): a missing path, an empty file, a truncated or corrupt file, a 4D or 2D image, a
    single DICOM slice, a folder with no or several DICOM series, NaN/inf voxels. Warns (and still returns) when the
    intensity range does not look like Hounsfield units.

    Args:
        path: ``.nii``/``.nii.gz`` file, a folder holding one DICOM series, or a ``.mha``/``.mhd``/``.nrrd`` file.

    Returns:
        the volume: ``array`` ``(X, Y, Z)`` float32, ``affine`` 4x4 RAS, ``source``, ``spacing``.
    """
    path = Path(path)
    if not path.exists():
        raise SynthCPInputError(f"{path}: no such file or folder.")
    if path.is_dir():
        array, affine = _read_dicom_folder(path)
    else:
        if path.stat().st_size == 0:
            raise SynthCPInputError(f"{path}: the file is empty (0 bytes).")
        name = path.name.lower()
        if name.endswith(NIFTI_SUFFIXES):
            array, affine = _read_nifti(path)
        elif name.endswith(ITK_SUFFIXES):
            array, affine = _read_with_sitk(path)
        elif name.endswith(DICOM_SUFFIXES) or _is_dicom_file(path):
            array, affine = _read_dicom_file(path)
        else:
            raise SynthCPInputError(
                f"{path}: unsupported file type; give a .nii/.nii.gz file or a folder holding one DICOM series."
            )
    return _finish(array, affine, path)


def ct_volume_from_array(array: Any, affine: Any, source: str = "<array>") -> CTVolume:
    """Apply :func:`load_ct_volume`'s checks to an in-memory volume, so arrays and files are refused alike.

    Args:
        array: ``(X, Y, Z)`` numpy array or torch tensor (a trailing ``(..., 1)`` axis is dropped).
        affine: 4x4 RAS affine (nibabel convention).
        source: how messages name the volume.

    Returns:
        a :class:`CTVolume` with a float32 array.
    """
    return _finish(to_numpy(array), np.asarray(affine, dtype=np.float64), Path(source))


def _finish(array: np.ndarray, affine: np.ndarray, path: Path) -> CTVolume:
    """Shared checks once an array and affine are read: dimensionality, finiteness, HU range."""
    shape = tuple(int(s) for s in array.shape)
    # Trailing singleton axes (X, Y, Z, 1) are a common export artefact of a 3D volume, not a 4D series.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    array = array.reshape(shape)
    if len(shape) > 3:
        raise SynthCPInputError(f"{path}: {len(shape)}D volume (shape {shape}): give one 3D CT volume.")
    if len(shape) < 3 or min(shape) < 2:
        raise SynthCPInputError(f"{path}: 2D image (shape {shape}): give a 3D CT volume with several slices.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise SynthCPInputError(f"{path}: voxel type {array.dtype} is not a scalar intensity; give a CT volume.")
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise SynthCPInputError(f"{path}: {bad} voxel(s) are NaN or infinite; a CT volume must hold finite values.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SynthCPInputError(f"{path}: the voxel-to-world affine is missing or degenerate: {affine.tolist()}.")
    _warn_if_not_hu(array, path)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return CTVolume(array=array, affine=affine, source=str(path), spacing=spacing)  # type: ignore[arg-type]


def _warn_if_not_hu(array: np.ndarray, path: Path) -> None:
    lo, hi = float(array.min()), float(array.max())
    step = max(1, array.size // 1_000_000)  # a strided sample keeps the percentile cheap on 512x512x500 volumes
    p99 = float(np.percentile(array.reshape(-1)[::step], 99))
    if not (_HU_PLAUSIBLE_MIN[0] <= lo <= _HU_PLAUSIBLE_MIN[1] and _HU_PLAUSIBLE_P99[0] <= p99 <= _HU_PLAUSIBLE_P99[1]):
        logger.warning(
            "%s: intensity range [%.1f, %.1f] (99th percentile %.1f) does not look like CT in Hounsfield units "
            "(air about -1000, soft tissue 0-100, bone up to a few thousand); results on it may be meaningless.",
            path,
            lo,
            hi,
            p99,
        )


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as err:
        raise SynthCPInputError(f"{path}: not a readable NIfTI file (corrupt or truncated header: {_reason(err)}).")
    if len(img.shape) > 3 and any(s > 1 for s in img.shape[3:]):
        # Refuse before reading the voxels: a 4D series may be large.
        raise SynthCPInputError(f"{path}: {len(img.shape)}D volume (shape {tuple(img.shape)}): give one 3D CT volume.")
    _check_declared_size(img, path)
    try:
        array = np.asanyarray(img.dataobj)
        if np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array):
            array = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged"))
    except _READ_ERRORS as err:
        raise SynthCPInputError(f"{path}: the voxel data cannot be read (truncated or corrupt file: {_reason(err)}).")
    return array, np.asarray(img.affine, dtype=np.float64)


# deflate's largest compression ratio (RFC 1951: one 258-byte match per 2-bit code, ~1032:1): a .nii.gz whose header
# declares more voxel bytes than this times its size cannot hold them
_DEFLATE_MAX_RATIO = 1032


def _check_declared_size(img: Any, path: Path) -> None:
    """Refuse a NIfTI whose header declares more voxel bytes than the file can hold, before reading any voxel (a
    lying header would otherwise ask for that much memory). Exact for ``.nii``; for ``.nii.gz`` the bound is the
    deflate ratio (a smaller lie ends as a truncated read, refused there)."""
    header = img.header
    declared = int(np.prod(img.shape, dtype=np.int64)) * int(header.get_data_dtype().itemsize)
    needed = int(header.get_data_offset()) + declared
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    if (size * _DEFLATE_MAX_RATIO if compressed else size) < needed:
        raise SynthCPInputError(
            f"{path}: the header declares {tuple(int(n) for n in img.shape)} voxels of "
            f"{header.get_data_dtype()} ({declared:,} bytes), more than the {size:,}-byte "
            f"{'compressed ' if compressed else ''}file can hold (truncated file or corrupt header)."
        )


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def affine_from_sitk(image: sitk.Image) -> np.ndarray:
    """RAS affine (nibabel convention) of a SimpleITK image, whose geometry is LPS.

    ITK maps index ``i`` to ``origin + direction @ diag(spacing) @ i`` in LPS; nibabel's array axes are ITK's index
    axes (the numpy array from ``GetArrayFromImage`` is transposed), so only the world axes flip.
    """
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:3, :3] = (direction @ np.diag(image.GetSpacing()))[:3, :3]
    lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return LPS_TO_RAS @ lps


def sitk_geometry_from_affine(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing, origin, direction)`` in ITK's LPS terms for a RAS ``affine`` (inverse of ``affine_from_sitk``)."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.ravel().tolist())


def _sitk_to_arrays(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SynthCPInputError("the image has several components per voxel (colour or vector image), not CT.")
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) for 3D
    array = np.transpose(array, tuple(range(array.ndim))[::-1])
    if image.GetDimension() < 3:
        return array, np.eye(4)
    return array, affine_from_sitk(image)


def _require_sitk(what: str) -> None:
    if sitk is None:
        raise SynthCPInputError(f"{what} needs SimpleITK, which is not installed (pip install SimpleITK).")


def _read_with_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _require_sitk(f"reading {path.name}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise SynthCPInputError(f"{path}: not a readable image file (corrupt or truncated: {_itk_reason(err)}).")
    try:
        return _sitk_to_arrays(image)
    except SynthCPInputError as err:
        raise SynthCPInputError(f"{path}: {err}")


def _itk_reason(err: BaseException) -> str:
    # ITK exceptions are multi-line with source locations; the last non-empty line is the human part.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _read_dicom_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A single DICOM file: accepted only when it is a multi-frame volume; one slice is refused."""
    _require_sitk("reading DICOM")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise SynthCPInputError(f"{path}: not a readable DICOM file ({_itk_reason(err)}).")
    size = reader.GetSize()
    if len(size) < 3 or size[2] <= 1:
        raise SynthCPInputError(
            f"{path}: a single DICOM slice ({size[0]}x{size[1]}), not a CT volume; give the folder that holds the "
            "whole series."
        )
    return _read_with_sitk(path)


def _series_label(folder: Path, series_id: str) -> str:
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    except RuntimeError:
        files = ()
    description = ""
    if files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        try:
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|103e"):
                description = reader.GetMetaData("0008|103e").strip()
        except RuntimeError:
            pass
    desc = f" '{description}'" if description else ""
    return f"{series_id}{desc} ({len(files)} files)"


def _read_dicom_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    _require_sitk("reading a DICOM folder")
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as err:
        raise SynthCPInputError(f"{folder}: the DICOM files in this folder cannot be read ({_itk_reason(err)}).")
    if not series_ids:
        if any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in folder.iterdir()):
            raise SynthCPInputError(f"{folder}: a folder of NIfTI files, not a DICOM series; give one .nii.gz file.")
        raise SynthCPInputError(
            f"{folder}: no DICOM series found in this folder (subfolders are not searched); give the series folder."
        )
    if len(series_ids) > 1:
        labels = "; ".join(_series_label(folder, sid) for sid in series_ids)
        raise SynthCPInputError(
            f"{folder}: holds {len(series_ids)} DICOM series ({labels}); put each series in its own folder."
        )
    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    except RuntimeError as err:
        raise SynthCPInputError(f"{folder}: the DICOM series cannot be listed ({_itk_reason(err)}).")
    if len(files) == 1:
        try:  # a multi-frame file is a volume; a single slice is refused
            return _read_dicom_file(Path(files[0]))
        except SynthCPInputError as err:
            raise SynthCPInputError(f"{folder}: the folder holds only one DICOM file: {err}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags, to check the slice positions below
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise SynthCPInputError(f"{folder}: the DICOM series cannot be read ({_itk_reason(err)}).")
    _check_slice_positions(reader, image, folder)
    try:
        return _sitk_to_arrays(image)
    except SynthCPInputError as err:
        raise SynthCPInputError(f"{folder}: {err}")


def _check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """Refuse missing or duplicate slices: ITK would silently stack them at the average spacing (wrong geometry)."""
    positions = []
    for i in range(len(reader.GetFileNames())):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return  # no ImagePositionPatient: nothing to check against
        try:
            positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
        except ValueError:
            return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    gaps = np.diff(np.sort(np.asarray(positions) @ normal))
    if gaps.size and (gaps.min() < 1e-3 or gaps.max() - gaps.min() > 0.01 * np.median(gaps) + 1e-3):
        raise SynthCPInputError(
            f"{folder}: the DICOM slices are not evenly spaced (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm): "
            "missing or duplicate slices; give a complete series."
        )


_NIFTI_DTYPES = {np.dtype(bool): np.uint8, np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32}


def save_like(
    array: Any, reference: CTVolume | np.ndarray, path: str | os.PathLike, dtype: np.dtype | type | None = None
) -> Path:
    """Write ``array`` as NIfTI on the grid of ``reference``, atomically.

    Args:
        array: ``(X, Y, Z)`` numpy array or torch tensor, in the reference's voxel order.
        reference: a :class:`CTVolume` (its affine and shape are used) or a 4x4 RAS affine.
        path: ``.nii`` or ``.nii.gz`` destination; the parent folder is created.
        dtype: stored voxel type; default keeps the array's (bool -> uint8, float64 -> float32, int64 -> int32).

    Returns:
        the written path. The gzip stream carries no time stamp or file name, so equal inputs give equal bytes.

    Not MONAI ``SaveImage``: it names files itself (postfixes, folders), needs the metadata of a ``MetaTensor`` and
    writes neither atomically nor reproducible gzip bytes.
    """
    path = Path(path)
    data = to_numpy(array)
    if isinstance(reference, CTVolume):
        affine = reference.affine
        if data.shape != reference.array.shape:
            raise SynthCPInputError(
                f"{path}: array shape {data.shape} differs from the reference volume's {reference.array.shape} "
                f"({reference.source})."
            )
    else:
        affine = np.asarray(reference, dtype=np.float64)
        if affine.shape != (4, 4):
            raise SynthCPInputError(
                f"{path}: the reference must be a CTVolume or a 4x4 affine, got shape {affine.shape}."
            )
    if data.ndim != 3:
        raise SynthCPInputError(f"{path}: expected a 3D array (X, Y, Z), got shape {data.shape}.")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise SynthCPInputError(f"{path}: the output must be a .nii or .nii.gz file.")
    target = np.dtype(dtype) if dtype is not None else np.dtype(_NIFTI_DTYPES.get(data.dtype, data.dtype))
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(target, copy=False)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    payload = img.to_bytes()
    if path.name.lower().endswith(".gz"):
        # Compressed here rather than by nibabel so the stream is pinned: no time stamp (mtime 0), no file name
        # (the temporary name would differ on every write), level 1 as nibabel uses: same data, same bytes.
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path
