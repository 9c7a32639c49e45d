from __future__ import annotations

import math

import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import mean_ensemble


def test_nan_aware_mean():
    nan = float("nan")
    a = torch.tensor([[0.2, nan, nan], [0.6, 0.4, 1.0]])
    b = torch.tensor([[0.4, 0.8, nan], [nan, 0.2, 0.0]])
    out = mean_ensemble(a, b)
    assert out[0, 0].item() == pytest.approx(0.3) and out[0, 1].item() == pytest.approx(0.8)
    assert math.isnan(out[0, 2].item())  # no method predicts it
    assert torch.allclose(out[1], torch.tensor([0.6, 0.3, 0.5]))
    assert torch.equal(mean_ensemble(a[1:]), a[1:])


def test_bad_inputs():
    with pytest.raises(SynthCPInputError):
        mean_ensemble()
    with pytest.raises(SynthCPInputError, match="shape"):
        mean_ensemble(torch.zeros(2, 3), torch.zeros(2, 2))
