"""Stage functions that study bundles call from their configs (``run: ["$@stage()"]``).

Each stage reads what earlier stages wrote below ``output_dir``, writes its own outputs atomically and a
``<stage>/done.json`` marker last (recording its inputs), and is skipped while those are unchanged (unless ``force``;
see :mod:`synthcp3d.workflows.common`). The pancreas study's stages are ``pancreas`` (prepare, segmenter,
cross-validation), ``pancreas_judges`` (synthesizer, comparators, VAE alarm) and ``pancreas_report`` (evaluate,
inference); the training bodies they (and the 2D studies' stages) run are ``protocol``'s, and the judges they fit
without training a network (painter, regressors) ``protocol_judges``', written once for any ``spatial_dims``.
``pancreas_model`` (settings, loading a trained output folder) and ``pancreas_scoring`` (scoring one case) are the
trained model those stages write: what inference and the DSC alarm need, without the training stages.
"""

from __future__ import annotations

__all__ = [
    "common", "trained", "protocol", "protocol_judges", "pancreas", "pancreas_judges", "pancreas_report", "pancreas_model",
    "pancreas_scoring",
]
