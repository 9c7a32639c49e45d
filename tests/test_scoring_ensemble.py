from __future__ import annotations

import math

import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import mean_ensemble, pairwise_agreement


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


def _dice_numpy(a, b, c):
    """Independent Dice of class ``c`` between two label arrays (None when absent from both)."""
    import numpy as np

    pa, pb = np.asarray(a) == c, np.asarray(b) == c
    total = pa.sum() + pb.sum()
    return None if total == 0 else 2.0 * np.logical_and(pa, pb).sum() / total


def test_pairwise_agreement_against_a_loop_over_pairs():
    import itertools

    import numpy as np

    g = torch.Generator().manual_seed(0)
    members = [torch.randint(0, 3, (2, 6, 5, 4), generator=g) for _ in range(4)]
    members[1][1] = members[0][1]  # identical members on image 1: a tie of agreement 1 for every class present
    for m in members:
        m[0][m[0] == 2] = 1  # class 2 absent from image 0 in every member
    members[3][0, 0, 0, 0] = 2  # ... except one voxel of one member: pairs with it are defined (Dice 0)
    out = pairwise_agreement(members, 3)
    assert out.shape == (2, 3)
    for b in range(2):
        for c in range(3):
            values = [_dice_numpy(x[b], y[b], c) for x, y in itertools.combinations(members, 2)]
            values = [v for v in values if v is not None]
            assert out[b, c].item() == pytest.approx(np.mean(values)), (b, c)
    assert out[0, 2].item() == 0.0  # 3 pairs with the lone voxel, each Dice 0; the other 3 pairs are undefined
    none = [torch.zeros(1, 3, 3, dtype=torch.long)] * 3
    assert math.isnan(pairwise_agreement(none, 2)[0, 1].item()) and pairwise_agreement(none, 2)[0, 0].item() == 1.0
    assert pairwise_agreement(members[:2], 3, metric="iou")[1, 0].item() == 1.0
    with pytest.raises(SynthCPInputError, match="at least 2"):
        pairwise_agreement(members[:1], 3)
