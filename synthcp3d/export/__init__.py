"""``synthcp export``: a trained pancreas run as a self-contained MONAI inference bundle.

.. code-block:: python

    from synthcp3d.export import export_bundle, verify_bundle_metadata

    bundle = export_bundle("runs/pancreas", "pancreas_bundle")      # -> Path("pancreas_bundle")
    verify_bundle_metadata(bundle / "configs" / "metadata.json")    # offline, against synthcp's schema

then ``python -m monai.bundle run --config_file pancreas_bundle/configs/inference.yaml --dataset_dir CTS
--output_dir OUT``. See :mod:`synthcp3d.export.bundle` for the layout.
"""

from __future__ import annotations

from synthcp3d.export.bundle import export_bundle
from synthcp3d.export.metadata import SCHEMA_PATH, verify_bundle_metadata

__all__ = ["export_bundle", "verify_bundle_metadata", "SCHEMA_PATH"]
