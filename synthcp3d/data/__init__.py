"""3D data: CT volume I/O, MSD decathlon folders, synthetic pancreas CT phantoms, and the ``synthcp data`` command.

- :mod:`~synthcp3d.data.volume_io`: ``load_ct_volume`` (NIfTI / DICOM series -> ``CTVolume``), ``save_like``.
- :mod:`~synthcp3d.data.msd`: ``load_msd_datalist``, ``check_msd_folder``, ``decathlon_dataset`` (MONAI).
- :mod:`~synthcp3d.data.phantom`: ``make_pancreas_dataset``, ``make_pancreas_case`` (the patient drawn in
  :mod:`~synthcp3d.data.phantom_anatomy`, painted in :mod:`~synthcp3d.data.phantom_painting`).

Names are imported lazily (MONAI, and with it torch, loads only when the MSD helpers are used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CTVolume": "volume_io",
    "load_ct_volume": "volume_io",
    "ct_volume_from_array": "volume_io",
    "save_like": "volume_io",
    "load_msd_datalist": "msd",
    "check_msd_folder": "msd",
    "decathlon_dataset": "msd",
    "make_pancreas_dataset": "phantom",
    "make_pancreas_case": "phantom",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
