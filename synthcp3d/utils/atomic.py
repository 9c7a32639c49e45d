"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash (or Ctrl-C) therefore never leaves half a checkpoint, half a NIfTI or half a report; at worst a
``.tmp`` file that the next write replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    Args:
        path: final destination. Its parent folder is created if needed.
        suffix: suffix of the temporary file (defaults to the target's full suffix, e.g. ``.nii.gz``, so
            libraries that infer the format from the name keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 minus umask).
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    """The process umask, read without changing it where the system allows (``os.umask`` can only set it, and a
    set-and-restore would briefly give files created meanwhile by other threads a zero umask)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place, so that after a power loss the target holds the
    old or the new content, never an empty file (the rename itself is atomic but may reach the disk first)."""
    if path.is_file():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def atomic_save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    return atomic_save_text(json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n", path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (load it back with ``torch.load(..., weights_only=True)``)."""
    with atomic_path(path, suffix="") as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths appear in reports; everything else is a bug worth surfacing.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
