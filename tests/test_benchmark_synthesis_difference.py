"""benchmarks/synthesis_difference_score{,_2d}.py: the region statistics by hand, and the 2D regressions read the
columns of the synthesis they name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synthesis_difference_score import difference_statistics, ring  # noqa: E402
from synthesis_difference_score_2d import LEARNED, SYNTHESES, score_table  # noqa: E402


def test_ring_in_2d_and_3d():
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[3, 3] = True
    grown = ring(mask, 1)
    assert grown.sum() == 8 and not grown[3, 3] and grown[2, 2] and not grown[1, 1]
    cube = torch.zeros(5, 5, 5, dtype=torch.bool)
    cube[2, 2, 2] = True
    assert ring(cube, 1).sum() == 26


def test_difference_statistics_by_hand():
    diff = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    inside = torch.tensor([[True, True], [False, False]])
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert difference_statistics(diff, [inside, empty]) == [-1.0, 2.0, 0.0, 0.0]


def test_each_row_reads_its_own_synthesis_columns():
    """Only the G(ŷ) columns carry the IoU: that row must predict it, the others not."""
    rng = np.random.default_rng(0)

    def split(n: int) -> dict:
        true = rng.random((n, 2))
        features = rng.normal(size=(n, 2, 1 + 4 * len(SYNTHESES)))
        features[:, :, 1] = true  # G(ŷ)'s mean signed difference inside the predicted class
        return {"features": features, "true": true}

    val = split(30)
    val["learned"] = {row: np.full((30, 2), 0.5) for row in LEARNED}
    table = score_table({"cv": split(80), "val": val})
    assert table["area + x - x̂ statistics, x̂ = G(ŷ)"]["P.C."] > 95
    for row in ("area only (no image)", "area + x - x̂ statistics, x̂ = blank"):
        assert table[row]["P.C."] < 50, row
    assert table["area + x - x̂ statistics, x̂ = G(ŷ)"]["MAE"] == pytest.approx(0.0, abs=5.0)
