"""Per-class linear map from one scalar feature to a quality (IoU / DSC), NaN-aware, JSON-able.

The shared core of the two image-level baselines that regress quality from a hand-made feature: MC-Dropout
"following Liu et al." (mean entropy inside the predicted class) and the VAE alarm (VAE loss or reconstruction
Dice). Column ``k`` of the features predicts column ``k`` of the quality with its own
``sklearn.linear_model.LinearRegression``.

The training pairs must come from cross-validated predictions (each fold's segmenter on its held-out cases), so
the regressor sees the failures a deployed segmenter makes; producing them is the engines' job.

Undefined values:

- fit: a pair is used only where both feature and target are finite (NaN quality = class absent from both label
  and prediction; NaN feature = e.g. class not predicted). A column with one usable pair, or with a constant
  feature, predicts the mean target; a column with none predicts NaN (and ``fit`` warns).
- predict: a NaN feature gives ``missing_feature_quality`` (NaN by default; MC-Dropout sets 0.0, see there).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.arrays import to_numpy

__all__ = ["LinearQualityRegressor", "as_feature_matrix"]


def as_feature_matrix(values: Any, name: str) -> np.ndarray:
    """``(N,)`` or ``(N, K)`` array-like (numpy, torch, list) -> float64 ``(N, K)``."""
    array = np.asarray(to_numpy(values), dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise SynthCPInputError(f"{name} must have shape (N,) or (N, C), got {array.shape}")
    return array


class LinearQualityRegressor:
    """Per-column ``quality = coef * feature + intercept``, clipped to [0, 1].

    Args:
        num_outputs: number of columns ``C`` (classes).
        missing_feature_quality: prediction where the feature is NaN (``None`` -> NaN).
    """

    kind = "linear_quality"

    def __init__(self, num_outputs: int, missing_feature_quality: float | None = None) -> None:
        if num_outputs < 1:
            raise SynthCPInputError(f"num_outputs must be at least 1, got {num_outputs}")
        self.num_outputs = int(num_outputs)
        self.missing_feature_quality = missing_feature_quality
        self.coef = np.full(self.num_outputs, np.nan)
        self.intercept = np.full(self.num_outputs, np.nan)
        self.num_samples = [0] * self.num_outputs
        self.fitted = False

    def _check_columns(self, array: np.ndarray, name: str) -> None:
        if array.shape[1] != self.num_outputs:
            raise SynthCPInputError(f"{name} has {array.shape[1]} column(s), the regressor has {self.num_outputs}")

    def fit(self, features: Any, true_quality: Any) -> LinearQualityRegressor:
        """Fit every column on its finite (feature, quality) pairs.

        Args:
            features: ``(N, C)`` (or ``(N,)`` when ``C == 1``).
            true_quality: ``(N, C)`` in [0, 1], NaN = undefined (excluded).
        """
        x = as_feature_matrix(features, "features")
        y = as_feature_matrix(true_quality, "true_quality")
        self._check_columns(x, "features")
        self._check_columns(y, "true_quality")
        if x.shape[0] != y.shape[0]:
            raise SynthCPInputError(f"features have {x.shape[0]} rows but true_quality has {y.shape[0]}")
        for k in range(self.num_outputs):
            usable = np.isfinite(x[:, k]) & np.isfinite(y[:, k])
            xk, yk = x[usable, k], y[usable, k]
            self.num_samples[k] = int(usable.sum())
            if xk.size == 0:
                warnings.warn(f"quality column {k} has no usable training pair; it will predict NaN", stacklevel=2)
                self.coef[k], self.intercept[k] = np.nan, np.nan
            elif xk.size == 1 or np.ptp(xk) == 0:
                self.coef[k], self.intercept[k] = 0.0, float(yk.mean())
            else:
                model = LinearRegression().fit(xk[:, None], yk)
                self.coef[k], self.intercept[k] = float(model.coef_[0]), float(model.intercept_)
        self.fitted = True
        return self

    def predict(self, features: Any) -> torch.Tensor:
        """``(N, C)`` features -> ``(N, C)`` float32 predicted quality in [0, 1] (on the features' device)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or from_state_dict() first")
        x = as_feature_matrix(features, "features")
        self._check_columns(x, "features")
        quality = np.clip(x * self.coef[None] + self.intercept[None], 0.0, 1.0)
        missing = np.nan if self.missing_feature_quality is None else self.missing_feature_quality
        quality = np.where(np.isnan(x), missing, quality)
        device = features.device if isinstance(features, torch.Tensor) else None
        return torch.as_tensor(quality, dtype=torch.float32, device=device)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (NaN coefficients are stored as ``null``)."""

        def listed(values: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "kind": self.kind,
            "num_outputs": self.num_outputs,
            "missing_feature_quality": self.missing_feature_quality,
            "coef": listed(self.coef),
            "intercept": listed(self.intercept),
            "num_samples": list(self.num_samples),
            "fitted": self.fitted,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LinearQualityRegressor:
        """Rebuild a regressor from :meth:`state_dict` output (checked: kind and lengths)."""
        if state.get("kind") != cls.kind:
            raise SynthCPInputError(f"state is for a {state.get('kind')!r} regressor, expected {cls.kind!r}")
        regressor = cls.__new__(cls)
        LinearQualityRegressor.__init__(regressor, state["num_outputs"], state.get("missing_feature_quality"))
        coef = np.array([np.nan if v is None else v for v in state["coef"]], dtype=np.float64)
        intercept = np.array([np.nan if v is None else v for v in state["intercept"]], dtype=np.float64)
        if coef.shape != (regressor.num_outputs,) or intercept.shape != coef.shape:
            raise SynthCPInputError(f"state holds {coef.size} coefficient(s) for {regressor.num_outputs} output(s)")
        regressor.coef, regressor.intercept = coef, intercept
        regressor.num_samples = list(state.get("num_samples", [0] * regressor.num_outputs))
        regressor.fitted = bool(state.get("fitted", True))
        regressor._restore_extra(state)
        return regressor

    def _restore_extra(self, state: dict[str, Any]) -> None:
        """Subclasses restore their own fields here."""
