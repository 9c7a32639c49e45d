"""SynthCP: "synthesize then compare" failure and anomaly detection for segmentation, built on MONAI.

``synthcp3d`` holds the dimension-generic core (every network and engine takes ``spatial_dims``) and the
3D CT application; ``synthcp2d`` holds only what is specific to the 2D street-scene studies.
"""

from __future__ import annotations

__version__ = "0.1.0"
