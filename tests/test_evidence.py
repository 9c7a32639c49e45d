"""Report sections of the evidence (segmenter spread, synthesis use, pixel table) against numpy and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

from synthcp3d.evidence import (
    feature_spread,
    feature_spread_section,
    pixel_section,
    quality_spread,
    segmenter_section,
    synthesis_gap,
    synthesis_section,
    synthesis_use_section,
)
from synthcp3d.metrics import pixel_failure_metrics
from synthcp3d.scoring.synthesis import PAINTER_NAME


def test_quality_spread_against_numpy():
    v = np.array([0.1, 0.5, np.nan, 0.29, 0.3, 0.9])
    s = quality_spread(v)
    finite = v[np.isfinite(v)]
    assert s["n"] == 5 and s["mean"] == pytest.approx(finite.mean())
    assert s["sd"] == pytest.approx(finite.std(ddof=1))
    assert s["failures"] == pytest.approx(2 / 5)  # 0.3 itself is not a failure
    assert quality_spread([np.nan])["n"] == 0 and quality_spread([0.4])["sd"] == 0.0


def test_segmenter_section_rows():
    true = np.array([[1.0, 0.8, 0.1], [1.0, 0.6, np.nan], [1.0, 0.7, 0.5]])
    md, data = segmenter_section("UNet", {"test": true}, ["background", "pancreas", "tumour"])
    assert "UNet" in md and "| test | 0.700 ± 0.100 (0 %, n=3) | 0.300 ± 0.283 (50 %, n=2) |" in md
    assert data["splits"]["test"]["tumour"]["n"] == 2


def test_synthesis_use_section_mean_change():
    ref = np.array([[1, 0.5, 0.2], [1, 0.7, 0.4]])
    md, data = synthesis_use_section(ref, {"blank": ref + [0, 0.1, -0.3]}, ["bg", "a", "b"])
    assert data["mean_abs_change"]["blank"] == pytest.approx({"a": 0.1, "b": 0.3})
    assert data["prediction_sd"]["a"] == pytest.approx(np.std([0.5, 0.7]))
    assert "| blank | 0.100 | 0.300 |" in md


def test_synthesis_use_section_chosen_columns_mean_and_undefined_pairs():
    """2D use: the classes shown are chosen, a first column averages every class with a value, NaN pairs are left
    out (a class never defined gives n/a and stays out of the mean)."""
    nan = np.nan
    ref = np.array([[0.5, 0.2, nan, 0.9], [0.7, nan, nan, 0.1]])
    blank = np.array([[0.6, 0.5, 0.3, 0.9], [0.4, 0.0, 0.2, 0.3]])
    md, data = synthesis_use_section(ref, {"blank": blank}, ["road", "car", "train", "sky"], name="SynthCP-joint",
                                     shown=["road", "train"], average=True)
    change = data["mean_abs_change"]["blank"]
    assert change["road"] == pytest.approx(0.2) and change["car"] == pytest.approx(0.3)
    assert change["sky"] == pytest.approx(0.1) and np.isnan(change["train"])
    assert change["mean over 3 classes"] == pytest.approx(0.2)  # road, car, sky
    assert data["prediction_sd"]["car"] == 0.0 and data["prediction_sd"]["sky"] == pytest.approx(0.4)
    assert "| x̂ replaced by | mean over 3 classes | road | train |" in md
    assert "| blank | 0.200 | 0.200 | n/a |" in md and "SynthCP-joint" in md


def test_synthesis_section_mean_over_classes_and_shown_columns():
    cases = {
        "G": [{"mean_error/a": 2.0, "mean_error/b": 4.0, "mae/a": 5.0, "mae/b": 7.0, "ssim": 0.5},
              {"mean_error/a": 4.0, "mean_error/b": np.nan, "mae/a": 7.0, "mae/b": np.nan, "ssim": 0.7}],
        "painter": [{"mean_error/a": 1.0, "mean_error/b": 1.0, "mae/a": 1.0, "mae/b": 1.0, "ssim": 0.1}],
    }
    md, rows = synthesis_section(cases, ["a", "b"], "levels", shown=["b"], where="2 images", element="pixel",
                                 average=True)
    assert rows["G"]["mean_error/a"] == pytest.approx(3.0) and rows["G"]["mean_error/b"] == pytest.approx(4.0)
    assert rows["G"]["mean_error/mean over classes"] == pytest.approx(3.5)
    assert rows["G"]["mae/mean over classes"] == pytest.approx(6.5) and rows["G"]["ssim"] == pytest.approx(0.6)
    assert "| G | 3.50 | 6.50 | 4.00 | 7.00 | 0.60 |" in md and "a: mean" not in md
    assert "pixel-wise" in md and "n=2" in md


def _quality_cases(values: np.ndarray, classes: list[str]) -> list[dict]:
    return [{f"mean_error/{c}": float(v) for c, v in zip(classes, row)} for row in values]


def test_synthesis_gap_against_the_normal_approximation():
    rng = np.random.default_rng(1)
    ref = rng.uniform(20, 40, size=(400, 1))
    diff = rng.normal(1.0, 3.0, size=(400, 1))
    gap = synthesis_gap(_quality_cases(ref + diff, ["a"]), _quality_cases(ref, ["a"]), ["mean_error/a"])
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))  # the paired mean's normal interval
    assert gap["n"] == 400 and gap["gap"] == pytest.approx(diff.mean())
    assert gap["low"] == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert gap["high"] == pytest.approx(diff.mean() + half, abs=0.1 * half)


def test_synthesis_gap_pairs_the_cases_and_skips_absent_classes():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 60, size=(30, 3))  # a wide spread the pairing cancels
    ref[rng.random(ref.shape) < 0.3] = np.nan  # classes absent from some cases, in both
    ref[:, 2] = np.nan
    ref[0, 2] = 10.0  # a class held by one case only: resamples without it drop the class, not the interval
    shifted = ref + np.array([2.0, 2.0, 2.0])
    classes = ["a", "b", "c"]
    gap = synthesis_gap(_quality_cases(shifted, classes), _quality_cases(ref, classes),
                        [f"mean_error/{c}" for c in classes])
    assert gap["gap"] == pytest.approx(2.0) and gap["low"] == pytest.approx(2.0) and gap["high"] == pytest.approx(2.0)
    assert gap["dropped"] == 0
    one = synthesis_gap(_quality_cases(shifted[:1], classes), _quality_cases(ref[:1], classes), ["mean_error/a"])
    assert one["gap"] == pytest.approx(2.0) and np.isnan(one["low"]) and np.isnan(one["high"])
    with pytest.raises(ValueError, match="same cases"):
        synthesis_gap(_quality_cases(shifted, classes), _quality_cases(ref[:5], classes), ["mean_error/a"])


def test_synthesis_gap_point_estimate_against_numpy_with_unequal_class_counts():
    rng = np.random.default_rng(4)
    ref = rng.uniform(10, 50, size=(25, 4))
    g = ref + rng.normal(0.0, 5.0, size=ref.shape)
    absent = rng.random(ref.shape) < np.array([0.0, 0.2, 0.6, 0.9])  # each class in a different number of cases
    ref[absent] = g[absent] = np.nan
    classes = ["a", "b", "c", "d"]
    gap = synthesis_gap(_quality_cases(g, classes), _quality_cases(ref, classes), [f"mean_error/{c}" for c in classes])
    expected = np.mean([np.nanmean(g[:, k]) - np.nanmean(ref[:, k]) for k in range(4)])  # per class, then classes
    assert gap["gap"] == pytest.approx(expected)
    assert gap["low"] < gap["gap"] < gap["high"]
    # a class held by one case, with a large gap: resamples without it leave it out rather than void the interval
    rare = np.full((25, 1), np.nan)
    rare[3] = 40.0
    lone = synthesis_gap(_quality_cases(np.hstack([rare + 30.0, g[:, :1]]), ["r", "a"]),
                         _quality_cases(np.hstack([rare, ref[:, :1]]), ["r", "a"]), ["mean_error/r", "mean_error/a"])
    assert np.isfinite(lone["low"]) and lone["low"] < lone["gap"] < lone["high"] and lone["dropped"] == 0
    only_rare = synthesis_gap(_quality_cases(rare + 30.0, ["r"]), _quality_cases(rare, ["r"]), ["mean_error/r"])
    assert only_rare["gap"] == pytest.approx(30.0) and only_rare["dropped"] > 0  # resamples missing every key
    assert only_rare["low"] == pytest.approx(30.0) and only_rare["high"] == pytest.approx(30.0)
    never = synthesis_gap(_quality_cases(np.full((5, 1), np.nan), ["r"]), _quality_cases(np.full((5, 1), np.nan), ["r"]),
                          ["mean_error/r"])
    assert np.isnan(never["gap"]) and np.isnan(never["low"])


@pytest.mark.parametrize("average", [True, False])
def test_synthesis_section_gap_to_the_painter(average):
    rng = np.random.default_rng(3)
    classes = ["near", "far"]
    ref = rng.uniform(20, 40, size=(40, 2))
    g = ref + np.stack([np.zeros(40), rng.normal(-6.0, 1.0, 40)], 1)  # level on "near", ahead on "far"
    per_case = {name: [{**q, "mae/near": 1.0, "mae/far": 1.0, "ssim": 0.5} for q in _quality_cases(v, classes)]
                for name, v in (("G", g), (PAINTER_NAME, ref))}
    md, rows = synthesis_section(per_case, classes, "levels", average=average)
    targets = ["mean over classes"] if average else classes
    for target in targets:
        keys = [f"mean_error/{c}" for c in (classes if average else [target])]
        figure = {name: np.mean([rows[name][k] for k in keys]) for name in per_case}  # the table's own figures
        assert rows["G"][f"mean_error_gap/{target}"] == pytest.approx(figure["G"] - figure[PAINTER_NAME])
        assert rows["G"][f"mean_error_gap_low/{target}"] <= rows["G"][f"mean_error_gap/{target}"]
        assert rows["G"][f"mean_error_gap_high/{target}"] >= rows["G"][f"mean_error_gap/{target}"]
    assert not any(k.startswith("mean_error_gap") for k in rows[PAINTER_NAME])
    if average:
        gap = rows["G"]["mean_error_gap/mean over classes"]
        assert gap == pytest.approx(-3.0, abs=0.5)
        assert f"G − class-mean painter, mean over classes: **{gap:+.2f}**" in md
        assert "G is better than the class-mean painter" in md
    else:
        assert "G − class-mean painter, near: **+0.00** levels (95 % interval +0.00 to +0.00)" in md
        assert "G is level with the class-mean painter (the interval holds 0)" in md
        assert "G is better than the class-mean painter" in md


def test_pixel_section_matches_metrics():
    rng = np.random.default_rng(0)
    errors = [rng.random(200) < 0.3 for _ in range(3)]
    scores = {"good": [e + rng.normal(0, 0.5, e.shape) for e in errors], "noise": [rng.random(200) for _ in errors]}
    md, data = pixel_section(scores, errors, "everywhere")
    for reduction in ("pooled", "per_image"):
        expected = pixel_failure_metrics(scores["good"], errors, reduction=reduction)
        assert data[reduction]["good"]["AUROC"] == pytest.approx(expected["AUROC"])
    assert data["pooled"]["good"]["AUROC"] > data["pooled"]["noise"]["AUROC"]
    assert "**pooled**" in md and "**per_image**" in md


def test_feature_spread_by_hand_and_collapse_flag():
    # columns [1, 3] and [2, 4]: population SD 1 each; mean |value| 2.5 -> 0.4
    assert feature_spread([[1.0, 2.0], [3.0, 4.0]]) == pytest.approx(0.4)
    assert feature_spread(np.tile([0.5, -2.0, 1.0], (6, 1))) == 0.0  # every case identical
    assert feature_spread(np.zeros((3, 4))) == 0.0
    rng = np.random.default_rng(0)
    working = rng.normal(1.0, 0.5, size=(20, 8))
    collapsed = np.tile(working[0], (20, 1)) + rng.normal(0, 1e-3, size=(20, 8))
    markdown, data = feature_spread_section({"SynthCP": working, "Direct Prediction": collapsed})
    assert data["SynthCP"]["collapsed"] is False and data["Direct Prediction"]["collapsed"] is True
    assert data["SynthCP"]["relative_spread"] == pytest.approx(working.std(0).mean() / np.abs(working).mean())
    assert "| Direct Prediction |" in markdown and "**yes**" in markdown
