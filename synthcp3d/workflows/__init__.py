"""Stage functions that study bundles call from their configs (``run: ["$@stage()"]``).

One module per study; each stage reads what earlier stages wrote below ``output_dir``, writes its own outputs
atomically and a ``<stage>/done.json`` marker last, and is skipped when that marker exists (unless ``force``).
``pancreas_model`` is the trained model the ``pancreas`` stages write (settings, loading, scoring one case): what
inference and the DSC alarm need, without the training stages.
"""

from __future__ import annotations

__all__ = ["common", "pancreas", "pancreas_model"]
