"""Find the CT cases named on the command line: NIfTI files, DICOM series folders, folders of either, CSV lists.

Discovery only decides *what* the cases are and *what to call them*; it never reads voxels. A path that does not
exist or cannot be read becomes a case anyway, so that loading it fails with its own reason in the batch summary
and the other cases still run ("one bad case never stops the others"). Only an argument that yields no case at all
(an empty folder, an empty CSV, a CSV without a usable column) is refused at once.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from synthcp3d.errors import SynthCPInputError

__all__ = ["CaseInput", "discover_inputs", "case_name", "is_dicom_file", "is_dicom_folder", "is_nifti_path"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CSV_PATH_COLUMNS = ("image", "path", "input", "file")
CSV_CASE_COLUMNS = ("case", "id", "case_id", "name")
CSV_MASK_COLUMNS = ("mask", "segmentation", "seg")


@dataclass(frozen=True)
class CaseInput:
    """One case to process.

    Attributes:
        case_id: unique, file-system-safe name used for the output files.
        path: the NIfTI file or DICOM series folder (or whatever the user named; loading decides if it is usable).
        kind: ``"nifti"``, ``"dicom"`` or ``"other"`` (a path that is neither; loading reports why).
        mask: a segmentation of this image to judge (NIfTI), or None (the bundle segments).
    """

    case_id: str
    path: Path
    kind: str
    mask: Path | None = None


Entry = tuple[Path, str | None, Path | None]  # (image path, given case name, mask path)


def is_nifti_path(path: Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` file or any file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM file directly."""
    return path.is_dir() and any(is_dicom_file(child) for child in sorted(path.iterdir()))


def case_name(path: Path) -> str:
    """Case name of a path: the file name without ``.nii``/``.nii.gz``, or the folder name; safe for file names."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"
    return name


def _classify(path: Path) -> str:
    if is_nifti_path(path):
        return "nifti"
    if path.is_dir():
        return "dicom"
    return "other"


def _from_folder(folder: Path) -> list[Entry]:
    if is_dicom_folder(folder):
        return [(folder, None, None)]
    found: list[Entry] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and is_nifti_path(child):
            found.append((child, None, None))
        elif child.is_dir() and is_dicom_folder(child):
            found.append((child, None, None))
    if not found:
        raise SynthCPInputError(f"folder {folder} holds no .nii/.nii.gz file and no DICOM series folder")
    return found


def _from_csv(csv_path: Path) -> list[Entry]:
    try:
        with open(csv_path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SynthCPInputError(f"cannot read the CSV list {csv_path}: {err}") from None
    if not rows:
        raise SynthCPInputError(f"CSV list {csv_path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    path_col = next((header.index(c) for c in CSV_PATH_COLUMNS if c in header), None)
    case_col = next((header.index(c) for c in CSV_CASE_COLUMNS if c in header), None)
    mask_col = next((header.index(c) for c in CSV_MASK_COLUMNS if c in header), None)
    if path_col is None:
        # No header: every row's first cell is a path.
        if len(header) > 1 or not (
            is_nifti_path(Path(rows[0][0].strip())) or (csv_path.parent / rows[0][0].strip()).exists()
        ):
            raise SynthCPInputError(
                f"CSV list {csv_path} has no column named one of {', '.join(CSV_PATH_COLUMNS)} "
                "(or give one path per line without a header)"
            )
        path_col, body = 0, rows
    else:
        body = rows[1:]
    entries: list[Entry] = []
    for row in body:
        cell, case, mask = (_cell(row, col) for col in (path_col, case_col, mask_col))
        if cell:
            entries.append((_relative_to(csv_path, cell), case, _relative_to(csv_path, mask) if mask else None))
    if not entries:
        raise SynthCPInputError(f"CSV list {csv_path} lists no case")
    return entries


def _cell(row: Sequence[str], col: int | None) -> str | None:
    """The stripped cell of column ``col`` (None when the column is absent, the row short or the cell empty)."""
    value = row[col].strip() if col is not None and col < len(row) else ""
    return value or None


def _relative_to(csv_path: Path, cell: str) -> Path:
    path = Path(cell).expanduser()
    return path if path.is_absolute() else csv_path.parent / path


def discover_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> list[CaseInput]:
    """Expand the user's inputs into cases, in the order given (folder contents sorted by name).

    Args:
        inputs: any mix of ``.nii``/``.nii.gz`` files, DICOM series folders (a folder holding DICOM files),
            folders holding NIfTI files and/or DICOM series folders, and ``.csv`` files listing any of these
            (a column ``image``/``path``, optionally ``case`` and ``mask`` (a segmentation to judge); or one path
            per line; relative paths are taken from the CSV's folder).

    Returns:
        the cases with unique ids (a repeated name gets ``_2``, ``_3`` ...).

    Raises:
        SynthCPInputError: no input at all, or an argument (folder, CSV) that yields no case.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise SynthCPInputError("no input given: name NIfTI files, DICOM series folders, a folder or a CSV list")
    entries: list[Entry] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            entries.extend(_from_csv(path))
        elif path.is_dir():
            entries.extend(_from_folder(path))
        else:
            entries.append((path, None, None))
    return _unique_cases(entries)


def _unique_cases(entries: Iterable[Entry]) -> list[CaseInput]:
    cases: list[CaseInput] = []
    used: set[str] = set()
    for path, given, mask in entries:
        base = case_name(Path(given)) if given else case_name(path)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        cases.append(CaseInput(case_id=name, path=path, kind=_classify(path), mask=mask))
    return cases
