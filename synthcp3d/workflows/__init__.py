"""Stage functions that study bundles call from their configs (``run: ["$@stage()"]``).

One module per study; each stage reads what earlier stages wrote below ``output_dir``, writes its own outputs
atomically and a ``<stage>/done.json`` marker last, and is skipped when that marker exists (unless ``force``).
"""

from __future__ import annotations

__all__ = ["common", "pancreas"]
