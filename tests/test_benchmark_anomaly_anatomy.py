"""benchmarks/anomaly_map_anatomy.py: the post-processed share and the distance-part AUROC, by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from anomaly_map_anatomy import ROWS, anatomy  # noqa: E402


def _save(folder: Path, name: str, anomaly, msp, maps) -> None:
    rows = [r.format(t=0.9) for r in ROWS]
    scores = folder / "evaluate" / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    np.savez(scores / name, is_anomaly=np.asarray(anomaly, bool), MSP=np.asarray(msp, np.float32),
             **{row: np.asarray(m, np.float32) for row, m in zip(rows, maps)})


def test_shares_and_aurocs_by_hand(tmp_path):
    anomaly = [1, 1, 0, 0, 0]
    msp = [0.5, 0.01, 0.05, 0.5, 0.02]  # 1 - p: pixels 1, 2 and 4 have p > 0.9 (replaced)
    perfect = [0.9, 0.8, 0.1, 0.2, 0.3]  # ranks both anomalies first
    # whole map: anomalies (0.9, 0.05) vs normals (0.3, 0.2, 0.04): 4 of 6 pairs -> 4/6;
    # distance part (pixels 0 and 3): anomaly 0.9 vs normal 0.2 -> 1
    mixed = [0.9, 0.05, 0.3, 0.2, 0.04]
    _save(tmp_path, "a.npz", anomaly, msp, [perfect, mixed, perfect])
    _save(tmp_path, "b.npz", [0, 0, 0, 0, 0], msp, [perfect] * 3)  # no anomaly: not averaged
    out = anatomy(tmp_path, t=0.9)
    assert out["replaced/anomaly"] == pytest.approx(50.0) and out["replaced/in-distribution"] == pytest.approx(200 / 3)
    assert out["SynthCP (t=0.9)"] == pytest.approx(100.0)
    assert out["SynthCP (t=0.9), x̂ = class-mean painter"] == pytest.approx(100 * 4 / 6)
    assert out["SynthCP (t=0.9), x̂ = class-mean painter/distance part"] == pytest.approx(100.0)


def test_a_folder_without_scores_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no evaluate/scores"):
        anatomy(tmp_path)
