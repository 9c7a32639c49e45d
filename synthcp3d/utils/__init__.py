from __future__ import annotations

from .arrays import to_numpy
from .atomic import atomic_path, atomic_save_json, atomic_save_text, atomic_torch_save

__all__ = ["atomic_path", "atomic_save_json", "atomic_save_text", "atomic_torch_save", "to_numpy"]
