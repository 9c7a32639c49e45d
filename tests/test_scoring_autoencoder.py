from __future__ import annotations

import pytest
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import autoencoder_score, reconstruction_l1, run_scorer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_reconstruction_l1_hand_example():
    x = torch.zeros(1, 2, 1, 2)
    recon = torch.tensor([[[[1.0, 0.0]], [[-3.0, 0.5]]]])
    assert torch.allclose(reconstruction_l1(x, recon), torch.tensor([[[2.0, 0.25]]]))


@pytest.mark.parametrize("spatial", [(4, 6), (2, 4, 4)])
def test_autoencoder_score_shapes_and_mode(spatial):
    conv = nn.Conv2d if len(spatial) == 2 else nn.Conv3d
    ae = conv(3, 3, 3, padding=1).train()
    x = torch.randn(2, 3, *spatial)
    score = autoencoder_score(ae, x)
    assert score.shape == (2, *spatial) and (score >= 0).all() and ae.training
    identity = nn.Identity()
    assert torch.equal(autoencoder_score(identity, x), torch.zeros(2, *spatial))
    assert run_scorer("autoencoder", {"autoencoder": identity, "image": x}).anomaly.shape == (2, *spatial)


def test_size_mismatch_is_a_clear_error():
    with pytest.raises(SynthCPInputError, match="divisible"):
        autoencoder_score(nn.Conv2d(1, 1, 2, stride=2), torch.randn(1, 1, 4, 4))
