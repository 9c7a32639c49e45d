"""benchmarks/output_stride_ceiling.py: the oracle that decides every ``stride`` pixels, checked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from output_stride_ceiling import oracle_miou  # noqa: E402


def _labels() -> torch.Tensor:
    """An 8 x 8 image: class 0 everywhere, a 4 x 4 block of class 1 aligned to the 4-grid, a 1-pixel pole of class 2
    and an ignored (label 3) corner."""
    y = torch.zeros(1, 8, 8, dtype=torch.int64)
    y[0, 4:8, 4:8] = 1
    y[0, :, 1] = 2
    y[0, 0, 6:8] = 3
    return y


def test_full_resolution_oracle_is_perfect():
    miou, iou = oracle_miou(_labels(), num_classes=3, stride=1)
    assert miou == 1.0 and np.array_equal(iou, np.ones(3))


def test_coarse_oracle_loses_the_thin_class_first():
    miou, iou = oracle_miou(_labels(), num_classes=3, stride=4)
    # each 4 x 4 cell holds a quarter pole at most: class 2 never wins a cell (the pole is lost), the aligned
    # block survives up to the bilinear blur at its edge; every rate is between 0 and 1
    assert iou[2] == 0.0 and iou[1] > 0.5 and iou[0] > 0.5
    assert miou == pytest.approx(iou.mean())
    # by hand at stride 8: one cell, class 0 wins everywhere (38 of the 62 labelled pixels), the block and pole are lost
    miou8, iou8 = oracle_miou(_labels(), num_classes=3, stride=8)
    assert iou8[0] == pytest.approx(38 / 62) and iou8[1] == 0.0 and iou8[2] == 0.0
    assert miou8 == pytest.approx((38 / 62) / 3)
