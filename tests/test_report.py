from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from synthcp3d.errors import SynthCPInputError
from synthcp3d.report import format_markdown_table, quality_report, read_per_case_csv


def _data(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 1, size=(n, 2))
    true[[1, 4, 7], 1] = np.nan  # tumour absent from both GT and prediction: undefined
    good = np.clip(true + rng.normal(0, 0.05, size=true.shape), 0, 1)
    bad = rng.uniform(0, 1, size=true.shape)
    good[np.isnan(good)] = 0.3  # predictions exist even where the truth is undefined
    return true, {"Good": good, "Random": bad}


def test_report_excludes_and_counts_undefined(tmp_path):
    true, preds = _data()
    cases = [f"case_{i}" for i in range(len(true))]
    rep = quality_report(preds, true, cases, ["pancreas", "tumour"], tmp_path, groups={"tumour": ["tumour"]})
    assert rep.counts["tumour"] == {"n_cases": 12, "n_defined": 9, "n_undefined": 3}
    keep = ~np.isnan(true[:, 1])
    t, p = true[keep, 1], preds["Good"][keep, 1]
    row = rep.tables["tumour"]["Good"]
    assert row["MAE"] == pytest.approx(100 * np.mean(np.abs(p - t)), abs=1e-6)
    assert row["PC"] == pytest.approx(100 * stats.pearsonr(p, t)[0], abs=1e-6)
    assert row["SC"] == pytest.approx(100 * stats.spearmanr(p, t)[0], abs=1e-6)
    assert rep.tables["tumour"]["Good"]["MAE"] < rep.tables["tumour"]["Random"]["MAE"]
    assert "3 undefined" in rep.markdown
    saved = json.loads(rep.files["json"].read_text())
    assert saved["undefined_cases"]["tumour"] == ["case_1", "case_4", "case_7"]
    assert saved["tables"]["tumour"]["Good"]["PC"] == pytest.approx(row["PC"])


def test_plots_and_per_case_roundtrip(tmp_path):
    true, preds = _data()
    cases = [f"c{i}" for i in range(len(true))]
    rep = quality_report(preds, true, cases, ["pancreas", "tumour"], tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("scatter_*.png"))
    assert pngs == sorted(f"scatter_{m}_{c}.png" for m in ("good", "random") for c in ("pancreas", "tumour"))
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    ids, true_back, pred_back = read_per_case_csv(rep.files["per_case_csv"])
    assert ids == cases
    np.testing.assert_allclose(true_back["tumour"], true[:, 1], equal_nan=True)
    np.testing.assert_allclose(pred_back["Random"]["pancreas"], preds["Random"][:, 0])
    assert set(rep.tables) == {"pancreas", "tumour"}
    assert (tmp_path / "report.csv").read_text().splitlines()[0].startswith("table,method,MAE")


def test_all_undefined_gives_nan_row_and_markdown(tmp_path):
    true = np.full((4, 1), np.nan)
    rep = quality_report({"A": np.zeros((4, 1))}, true, list("abcd"), ["tumour"], tmp_path)
    assert np.isnan(rep.tables["tumour"]["A"]["MAE"])
    assert "n/a" in format_markdown_table(rep.tables["tumour"])


def test_shape_errors(tmp_path):
    with pytest.raises(SynthCPInputError):
        quality_report({"A": np.zeros((3, 2))}, np.zeros((4, 2)), list("abcd"), ["x", "y"], tmp_path)
    with pytest.raises(SynthCPInputError):
        quality_report({"A": np.zeros((4, 2))}, np.zeros((4, 2)), list("abcd"), ["x", "y"], tmp_path, groups={"g": ["z"]})
