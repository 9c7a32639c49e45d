from __future__ import annotations

import math

import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import entropy_score, max_logit_score, msp_score


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_shapes_2d_3d(spatial):
    logits = torch.randn(2, 4, *spatial)
    probs = logits.softmax(1)
    for score in (msp_score(probs), entropy_score(probs), max_logit_score(logits)):
        assert score.shape == (2, *spatial)


def test_monotonic_and_bounded_on_hand_made_probs():
    # Three pixels from confident to uniform over C = 4 classes.
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]).T[None]  # (1, 4, 3)
    msp = msp_score(probs)[0]
    entropy = entropy_score(probs)[0]
    assert torch.allclose(msp, torch.tensor([0.0, 0.3, 0.75]))
    assert entropy[0] == 0.0 and torch.isclose(entropy[2], torch.tensor(1.0))
    assert (msp.diff() > 0).all() and (entropy.diff() > 0).all()
    assert ((entropy >= 0) & (entropy <= 1)).all() and ((msp >= 0) & (msp <= 0.75)).all()
    nats = entropy_score(probs, normalize=False)[0]
    assert torch.isclose(nats[2], torch.tensor(math.log(4.0)))


def test_max_logit_is_negative_max():
    logits = torch.tensor([[3.0, -1.0], [0.5, 2.0]])[None, :, :, None]  # (1, 2, 2, 1)
    assert torch.equal(max_logit_score(logits)[0, :, 0], torch.tensor([-3.0, -2.0]))
    assert (max_logit_score(logits * 2) < max_logit_score(logits)).all()  # more confident = lower score


def test_bad_inputs():
    with pytest.raises(SynthCPInputError):
        entropy_score(torch.ones(1, 1, 3))
    with pytest.raises(SynthCPInputError):
        msp_score(torch.full((1, 2, 3), float("nan")))
