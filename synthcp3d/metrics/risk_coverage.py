"""Risk–coverage of an image-level quality predictor: AURC and E-AURC (×100), the headline of current
failure-detection benchmarks (e.g. Zenk et al., Medical Image Analysis 2025).

A predictor that says "this case is good" (high predicted quality) is used to accept cases, the most confident
first; the risk of an accepted case is ``1 - true quality``. Definitions (AURC and E-AURC as Geifman et al.,
ICLR 2019 define them; the tie rule is this project's, see the README's "Metrics"):

- confidence = predicted quality; thresholds only at distinct confidence values, so cases with equal confidence
  are accepted together (ties are never broken by input order);
- AURC = Σ over those thresholds of (mean risk of the accepted cases) × (coverage increment);
- E-AURC = AURC − the AURC of the oracle that accepts the cases one at a time by increasing true risk (the part
  a perfect ranking removes). The oracle is a ranking, not a confidence: cases of equal true risk are still
  accepted one by one (their order does not matter). Scoring the oracle with grouped ties instead would charge it
  the group's final mean risk over the whole group and, with many equal true values (tumour DSC 0), put it above
  a predictor that breaks those ties: a negative E-AURC.

scikit-learn and MONAI have no risk–coverage curve; written here, checked against a direct loop in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthcp3d.errors import SynthCPInputError

__all__ = ["risk_coverage", "risk_coverage_curve"]


def _as_vectors(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise SynthCPInputError(f"predicted {p.shape} and true {t.shape} quality differ in length")
    keep = np.isfinite(p) & np.isfinite(t)
    p, t = p[keep], t[keep]
    if t.size and (t.min() < -1e-6 or t.max() > 1 + 1e-6):
        raise SynthCPInputError("true quality must be a fraction in [0, 1] (not a percentage)")
    return p, t


def risk_coverage_curve(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk at each distinct confidence, most confident first.

    Args:
        predicted: ``(N,)`` predicted quality (confidence); NaN pairs are dropped.
        true: ``(N,)`` true quality in [0, 1].

    Returns:
        ``(coverage, risk)``, each ``(K,)`` for the ``K`` distinct confidence values: the share of cases accepted and
        the mean ``1 - true`` over them.
    """
    p, t = _as_vectors(predicted, true)
    if not p.size:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-p, kind="stable")
    p, risk = p[order], 1.0 - t[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p) != 0), p.size - 1]
    accepted = last_of_tie + 1
    return accepted / p.size, np.cumsum(risk)[last_of_tie] / accepted


def _aurc(coverage: np.ndarray, risk: np.ndarray) -> float:
    increments = np.diff(np.r_[0.0, coverage])
    return float((risk * increments).sum())


def risk_coverage(predicted: Any, true: Any) -> dict[str, float]:
    """AURC and E-AURC (×100) of one class's predicted quality; NaN pairs dropped, NaN result when none is left.

    Args:
        predicted: ``(N,)`` predicted quality.
        true: ``(N,)`` true quality in [0, 1] (NaN = undefined, dropped).

    Returns:
        ``{"AURC", "E-AURC", "n"}``.
    """
    p, t = _as_vectors(predicted, true)
    if not p.size:
        return {"AURC": float("nan"), "E-AURC": float("nan"), "n": 0}
    aurc = _aurc(*risk_coverage_curve(p, t))
    oracle_risk = np.sort(1.0 - t)
    oracle = float((np.cumsum(oracle_risk) / np.arange(1, t.size + 1)).mean())
    return {"AURC": 100.0 * aurc, "E-AURC": 100.0 * (aurc - oracle), "n": int(p.size)}
