"""The two 2D studies wired onto the dimension-generic core (``spatial_dims=2``): stage functions that the bundles
``bundles/cityscapes_failure_synthcp`` and ``bundles/streethazards_anomaly_synthcp`` call from their configs.

- :mod:`synthcp2d.studies.common`: 2D data caching, the shared training wiring and the stages both studies share
  (``train_synthesizer``, ``train_autoencoder``);
- :mod:`synthcp2d.studies.cityscapes`: failure detection (paper Table 1, Fig. 5), a package: settings, training
  stages, scoring, evaluation;
- :mod:`synthcp2d.studies.streethazards`: anomaly segmentation (paper Tables 3 and 4, Fig. 7);
- :mod:`synthcp2d.studies.figures`: the figure panels and the pixel-metric tables.
"""

from __future__ import annotations

__all__ = ["cityscapes", "common", "figures", "streethazards"]
