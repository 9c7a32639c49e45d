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


@pytest.mark.parametrize("seed", range(5))
def test_random_and_tie_heavy_inputs_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = 40
    true = rng.random(n)
    for pred in (rng.random(n), np.round(rng.random(n), 1), np.full(n, 0.5)):  # continuous, tie-heavy, constant
        out = risk_coverage(pred, true)
        assert out["AURC"] == pytest.approx(_reference_aurc(pred, true), abs=1e-10)
        assert out["E-AURC"] == pytest.approx(_reference_aurc(pred, true) - _reference_aurc(true, true), abs=1e-10)
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
