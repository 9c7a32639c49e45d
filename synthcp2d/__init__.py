"""2D studies of SynthCP on the shared core: Cityscapes failure detection, StreetHazards anomaly segmentation."""

from __future__ import annotations
