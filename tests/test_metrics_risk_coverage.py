"""AURC / E-AURC against an independent implementation: a loop over every distinct threshold, in plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics import risk_coverage, risk_coverage_curve


def _reference_aurc(conf, quality):
    """Accept every case with confidence >= c, for each distinct c from high to low; rectangle rule."""
    pairs = [(float(c), 1.0 - float(q)) for c, q in zip(conf, quality)]
    n, total, previous = len(pairs), 0.0, 0.0
    for c in sorted({c for c, _ in pairs}, reverse=True):
        accepted = [r for cc, r in pairs if cc >= c]
        coverage = len(accepted) / n
        total += (sum(accepted) / len(accepted)) * (coverage - previous)
        previous = coverage
    return 100.0 * total


def _reference_oracle(quality):
    """Accept the cases one by one, lowest risk first; rectangle rule with steps of 1/n."""
    risks = sorted(1.0 - float(q) for q in quality)
    return 100.0 * sum(sum(risks[: k + 1]) / (k + 1) for k in range(len(risks))) / len(risks)


@pytest.mark.parametrize("seed", range(5))
def test_random_and_tie_heavy_inputs_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    true = rng.random(n)
    for pred in (rng.random(n), np.round(rng.random(n), 1), np.full(n, 0.5)):  # continuous, tie-heavy, constant
        out = risk_coverage(pred, true)
        assert out["AURC"] == pytest.approx(_reference_aurc(pred, true), abs=1e-10)
        assert out["E-AURC"] == pytest.approx(_reference_aurc(pred, true) - _reference_oracle(true), abs=1e-10)
        assert out["n"] == n


def test_edge_cases():
    true = np.array([0.9, 0.2, 0.6, 0.4])
    oracle = risk_coverage(true, true)
    assert oracle["E-AURC"] == pytest.approx(0.0, abs=1e-12)
    worst = risk_coverage(-true, true)
    assert worst["AURC"] > oracle["AURC"] and worst["E-AURC"] > 0
    constant = risk_coverage(np.zeros(4), true)  # all accepted together: AURC = mean risk
    assert constant["AURC"] == pytest.approx(100 * np.mean(1 - true))
    single = risk_coverage([0.3], [0.7])
    assert single["AURC"] == pytest.approx(30.0) and single["E-AURC"] == pytest.approx(0.0)
    empty = risk_coverage([np.nan, 0.2], [0.5, np.nan])
    assert empty["n"] == 0 and np.isnan(empty["AURC"])
    coverage, risk = risk_coverage_curve([0.9, 0.9, 0.1], [1.0, 0.0, 0.5])
    assert coverage.tolist() == pytest.approx([2 / 3, 1.0]) and risk.tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(SynthCPInputError, match="fraction"):
        risk_coverage([0.5], [50.0])
    with pytest.raises(SynthCPInputError, match="length"):
        risk_coverage([0.5, 0.2], [0.5])


@pytest.mark.parametrize("seed", range(5))
def test_e_aurc_is_never_negative_when_true_quality_ties(seed):
    """Many true DSC of exactly 0 (missed tumours) and 1: no ranking may beat the oracle."""
    rng = np.random.default_rng(seed)
    true = rng.choice([0.0, 0.0, 0.0, 1.0, 0.5, 0.8], size=30)
    for pred in (rng.random(30), true + 1e-3 * rng.random(30), np.round(rng.random(30), 1)):
        assert risk_coverage(pred, true)["E-AURC"] >= -1e-10
    # three cases, risks 0, 1, 1: the tie-breaking predictor reaches the oracle, 100 * (0 + 1/2 + 2/3) / 3
    out = risk_coverage([0.9, 0.5, 0.4], [1.0, 0.0, 0.0])
    assert out["AURC"] == pytest.approx(100 * (0 + 0.5 + 2 / 3) / 3) and out["E-AURC"] == pytest.approx(0.0, abs=1e-10)
