from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics import STD_DDOF, quality_metrics


def _reference(pred: np.ndarray, true: np.ndarray) -> dict:
    """Per class over defined images with numpy / scipy, then the mean over classes (independent of the module)."""
    per = {"MAE": [], "STD": [], "PC": [], "SC": []}
    for c in range(true.shape[1]):
        keep = ~np.isnan(true[:, c])
        x, y = pred[keep, c], true[keep, c]
        per["MAE"].append(np.mean(np.abs(x - y)))
        per["STD"].append(np.std(np.abs(x - y)))
        per["PC"].append(stats.pearsonr(x, y)[0])
        per["SC"].append(stats.spearmanr(x, y)[0])
    return {key: 100 * float(np.mean(values)) for key, values in per.items()}


def test_matches_numpy_scipy_with_undefined_values():
    rng = np.random.default_rng(0)
    true = rng.random((40, 3))
    pred = np.clip(true + rng.normal(0, 0.2, true.shape), 0, 1)
    true[rng.random(true.shape) < 0.25] = np.nan
    pred[np.isnan(true)] = np.nan  # NaN in predicted is fine where true is undefined
    result = quality_metrics(pred, true)
    reference = _reference(pred, true)
    for key in ("MAE", "STD", "PC", "SC"):
        assert result[key] == pytest.approx(reference[key], abs=1e-6)
    assert result["num_undefined"] == int(np.isnan(true).sum()) > 0
    assert result["num_values"] == int((~np.isnan(true)).sum())
    assert result["excluded"] == []
    assert [row["num_values"] for row in result["per_class"]] == list((~np.isnan(true)).sum(0))
    assert STD_DDOF == 0


def test_one_dimensional_and_torch_inputs():
    rng = np.random.default_rng(1)
    true, pred = rng.random(25), rng.random(25)
    flat = quality_metrics(pred, true)
    column = quality_metrics(torch.from_numpy(pred[:, None]), torch.from_numpy(true[:, None]))
    for key in ("MAE", "STD", "PC", "SC"):
        assert flat[key] == pytest.approx(column[key], abs=1e-12)
    assert flat["PC"] == pytest.approx(100 * stats.pearsonr(pred, true)[0], abs=1e-6)
    assert flat["SC"] == pytest.approx(100 * stats.spearmanr(pred, true)[0], abs=1e-6)
    assert flat["STD"] == pytest.approx(100 * np.std(np.abs(pred - true), ddof=0), abs=1e-6)


def test_classes_left_out_of_correlation_are_reported():
    rng = np.random.default_rng(2)
    true = rng.random((6, 4))
    pred = rng.random((6, 4))
    true[:, 0] = np.nan  # never defined: out of everything
    true[1:, 1] = np.nan  # one value: MAE/STD only
    true[:, 2] = 0.5  # constant truth: no correlation
    result = quality_metrics(pred, true, class_names=["bg", "one", "flat", "ok"])
    reasons = {entry["class"]: entry for entry in result["excluded"]}
    assert set(reasons) == {"bg", "one", "flat"}
    assert reasons["bg"]["metrics"] == ["MAE", "STD", "PC", "SC"]
    assert reasons["one"]["metrics"] == ["PC", "SC"] and "fewer than 2" in reasons["one"]["reason"]
    assert "constant true" in reasons["flat"]["reason"]
    assert result["PC"] == pytest.approx(100 * stats.pearsonr(pred[:, 3], true[:, 3])[0], abs=1e-6)
    mae = [np.abs(pred[0, 1] - true[0, 1]), np.mean(np.abs(pred[:, 2] - 0.5)), np.mean(np.abs(pred[:, 3] - true[:, 3]))]
    assert result["MAE"] == pytest.approx(100 * np.mean(mae), abs=1e-6)
    assert math.isnan(result["per_class"][0]["MAE"]) and result["per_class"][1]["STD"] == 0.0


def test_constant_prediction_and_nothing_correlatable_gives_nan():
    result = quality_metrics(np.full(5, 0.3), np.linspace(0, 1, 5))
    assert math.isnan(result["PC"]) and math.isnan(result["SC"])
    assert "constant predicted" in result["excluded"][0]["reason"]
    assert result["MAE"] == pytest.approx(100 * np.mean(np.abs(0.3 - np.linspace(0, 1, 5))))


def test_bad_inputs_raise_clear_errors():
    true = np.array([[0.2, 0.4], [0.6, np.nan]])
    with pytest.raises(ValueError, match="predicted holds NaN.*image 0, class 1"):
        quality_metrics(np.array([[0.1, np.nan], [0.2, 0.3]]), true)
    with pytest.raises(SynthCPInputError, match="shape"):
        quality_metrics(np.zeros((2, 3)), true)
    with pytest.raises(SynthCPInputError, match=r"\(N images, C classes\)"):
        quality_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(SynthCPInputError, match="class_names"):
        quality_metrics(true, true, class_names=["a"])
    with pytest.raises(SynthCPInputError, match=r"outside \[0, 1\] \(e\.g\. 20\).*not percentages"):
        quality_metrics(true, 100 * true)  # percentages would silently give MAE x100 too large
