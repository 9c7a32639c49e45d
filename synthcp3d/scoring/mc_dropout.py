"""MC-Dropout (Gal & Ghahramani 2016): pixel uncertainty, and the image-level quality baseline "following Liu et al.".

- :func:`mc_dropout_probs`: ``samples`` stochastic forward passes with only the dropout layers active (batch norm
  stays in eval mode), returning the mean softmax and its predictive entropy ``H(mean p) / log C`` in [0, 1]
  (the pixel-level score).
- :class:`MCDropoutQualityRegressor`: per class, the mean entropy inside the predicted region of that class is
  mapped linearly to IoU / DSC (Liu et al., ICCV 2019, use MC-Dropout this way as an image-level baseline; the
  SynthCP paper follows them). A class the segmenter does not predict has no entropy feature; its predicted
  quality is 0.0, which is exact wherever the true quality is defined (empty prediction, non-empty label).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from torch import nn
from tqdm.auto import tqdm

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import enable_mc_dropout
from synthcp3d.scoring.base import ScoreOutput, inference_mode, register_scorer
from synthcp3d.scoring.regression import LinearQualityRegressor, as_feature_matrix
from synthcp3d.scoring.softmax_scores import entropy_score
from synthcp3d.targets import as_label_map

__all__ = ["mc_dropout_probs", "mean_entropy_per_class", "MCDropoutQualityRegressor", "MCDropoutFullLinearRegressor"]


def _logits_of(output: Any) -> torch.Tensor:
    # Segmenters return logits; tolerate (logits, features) tuples and {"logits": ...} dicts.
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif isinstance(output, dict):
        output = output["logits"]
    return output


def mc_dropout_probs(
    segmenter: nn.Module, x: torch.Tensor, samples: int = 50, progress: bool = False, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax over ``samples`` dropout draws, and its normalised predictive entropy.

    The segmenter's own train/eval flags are restored afterwards. No gradients are kept.

    Args:
        segmenter: ``forward(x) -> logits (B, C, *S)`` with dropout layers (see ``synthcp3d.networks``).
        x: input ``(B, Cin, *S)``.
        samples: number of stochastic passes (50 in the SynthCP paper's baseline).
        progress: show a progress bar over the passes (off by default: evaluators show their own).
        seed: draw the dropout masks from a generator seeded with it (the global random state is restored
            afterwards), so that an image's score does not depend on what the process ran before; ``None``: the
            global random state.

    Returns:
        ``mean_probs (B, C, *S)`` and ``entropy_map (B, *S)`` in [0, 1].
    """
    if samples < 1:
        raise SynthCPInputError(f"samples must be at least 1, got {samples}")
    total: torch.Tensor | None = None
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), inference_mode(segmenter):
        if seed is not None:
            torch.manual_seed(int(seed))
        enable_mc_dropout(segmenter)
        for _ in tqdm(range(samples), desc="MC-Dropout", disable=not progress, leave=False):
            probs = torch.softmax(_logits_of(segmenter(x)).float(), dim=1)
            total = probs if total is None else total.add_(probs)
    assert total is not None
    mean_probs = total / samples
    return mean_probs, entropy_score(mean_probs)


def mean_entropy_per_class(entropy_map: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of ``entropy_map`` over the pixels predicted as each class.

    Args:
        entropy_map: ``(B, *S)``.
        prediction: predicted class indices ``(B, *S)`` or ``(B, 1, *S)``, or one-hot / probabilities
            ``(B, C, *S)`` (argmax taken).
        num_classes: ``C``.

    Returns:
        ``(B, C)``; NaN for a class with no predicted pixel.
    """
    if prediction.ndim == entropy_map.ndim + 1 and prediction.shape[1] == num_classes and num_classes > 1:
        prediction = prediction.argmax(dim=1)
    prediction = as_label_map(prediction)
    if prediction.shape != entropy_map.shape:
        raise SynthCPInputError(
            f"prediction shape {tuple(prediction.shape)} differs from entropy map shape {tuple(entropy_map.shape)}"
        )
    batch = entropy_map.shape[0]
    labels = prediction.reshape(batch, -1)
    valid = ((labels >= 0) & (labels < num_classes)).float()
    labels = labels.clamp(0, num_classes - 1)
    # scatter-add keeps memory at O(B * pixels), unlike a (B, pixels, C) one-hot.
    zeros = torch.zeros(batch, num_classes, device=entropy_map.device)
    sums = zeros.scatter_add(1, labels, entropy_map.reshape(batch, -1).float() * valid)
    counts = zeros.scatter_add(1, labels, valid)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


class MCDropoutQualityRegressor(LinearQualityRegressor):
    """Per-class linear regression from mean MC-Dropout entropy in the predicted region to IoU / DSC.

    ``fit(features (N, C), true_quality (N, C) with NaN = undefined)``; ``predict(features) -> (N, C)`` in [0, 1];
    a NaN feature (class not predicted) predicts 0.0. Features come from :func:`mean_entropy_per_class`.
    """

    kind = "mc_dropout_quality"
    feature = "mean normalised predictive entropy inside the predicted class region"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, missing_feature_quality=0.0)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state."""
        return {**super().state_dict(), "feature": self.feature}


class MCDropoutFullLinearRegressor:
    """The authors' release's image-level MC-Dropout map: one linear regression from the whole per-class entropy
    vector ``(C,)`` to every class's quality ``(C,)`` (where :class:`MCDropoutQualityRegressor` maps each class's
    entropy to its own quality only).

    Each output column is fitted (sklearn ``LinearRegression``) on the images where its true quality is defined. A
    class that is not predicted has no entropy (NaN): it enters the input as 0 and its own prediction is 0.0, exact
    wherever the true quality is defined.
    """

    kind = "mc_dropout_full_linear"

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise SynthCPInputError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.coef = np.full((self.num_classes, self.num_classes), np.nan)  # (output, input)
        self.intercept = np.full(self.num_classes, np.nan)
        self.fitted = False

    def _inputs(self, features: Any) -> np.ndarray:
        x = as_feature_matrix(features, "features")
        if x.shape[1] != self.num_classes:
            raise SynthCPInputError(f"features have {x.shape[1]} column(s), the regressor has {self.num_classes}")
        return x

    def fit(self, features: Any, true_quality: Any) -> MCDropoutFullLinearRegressor:
        """``features (N, C)`` (NaN = class not predicted), ``true_quality (N, C)`` in [0, 1] (NaN = undefined)."""
        x, y = self._inputs(features), as_feature_matrix(true_quality, "true_quality")
        if y.shape != x.shape:
            raise SynthCPInputError(f"true_quality {y.shape} does not match features {x.shape}")
        filled = np.nan_to_num(x, nan=0.0)
        for k in range(self.num_classes):
            rows = np.isfinite(y[:, k])
            if not rows.any():
                warnings.warn(f"quality column {k} has no defined value; it will predict NaN", stacklevel=2)
                continue
            model = LinearRegression().fit(filled[rows], y[rows, k])
            self.coef[k], self.intercept[k] = model.coef_, float(model.intercept_)
        self.fitted = True
        return self

    def predict(self, features: Any) -> torch.Tensor:
        """``(N, C)`` features -> ``(N, C)`` float32 predicted quality in [0, 1] (0 for a class not predicted)."""
        if not self.fitted:
            raise RuntimeError("MCDropoutFullLinearRegressor is not fitted: call fit() or from_state_dict() first")
        x = self._inputs(features)
        quality = np.clip(np.nan_to_num(x, nan=0.0) @ self.coef.T + self.intercept[None], 0.0, 1.0)
        quality = np.where(np.isnan(x), 0.0, quality)
        device = features.device if isinstance(features, torch.Tensor) else None
        return torch.as_tensor(quality, dtype=torch.float32, device=device)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (a column never fitted is stored as ``null``)."""
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "coef": [None if np.isnan(r).any() else r.tolist() for r in self.coef],
            "intercept": [None if np.isnan(v) else float(v) for v in self.intercept],
            "fitted": self.fitted,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MCDropoutFullLinearRegressor:
        if state.get("kind") != cls.kind:
            raise SynthCPInputError(f"state is for a {state.get('kind')!r} regressor, expected {cls.kind!r}")
        regressor = cls(int(state["num_classes"]))
        c = regressor.num_classes
        rows = [np.full(c, np.nan) if r is None else np.asarray(r, dtype=np.float64) for r in state["coef"]]
        regressor.coef = np.stack(rows) if rows else regressor.coef
        regressor.intercept = np.array([np.nan if v is None else v for v in state["intercept"]], dtype=np.float64)
        if regressor.coef.shape != (c, c) or regressor.intercept.shape != (c,):
            raise SynthCPInputError(f"state holds a {regressor.coef.shape} map for {c} classes")
        regressor.fitted = bool(state.get("fitted", True))
        return regressor


@register_scorer(
    "mc_dropout",
    inputs=("segmenter", "image"),
    optional=("mc_regressor", "segmentation"),
    description="MC-Dropout predictive entropy (+ per-class quality when a fitted regressor is given)",
)
def _mc_dropout(
    segmenter: nn.Module,
    image: torch.Tensor,
    mc_regressor: Any = None,
    segmentation: torch.Tensor | None = None,
    samples: int = 50,
    seed: int | None = None,
) -> ScoreOutput:
    """The quality feature is the mean entropy inside each class region of the judged ``segmentation`` (one-hot
    ``(B, C, *S)``; the regions its regressor was fitted on), or of the MC mean's argmax when none is given."""
    mean_probs, entropy = mc_dropout_probs(segmenter, image, samples=samples, seed=seed)
    quality = None
    if mc_regressor is not None:
        regions = segmentation if segmentation is not None else mean_probs.argmax(dim=1)
        features = mean_entropy_per_class(entropy, regions, mean_probs.shape[1])
        quality = mc_regressor.predict(features)
    return ScoreOutput(pixel_error=entropy, anomaly=entropy, quality=quality)
