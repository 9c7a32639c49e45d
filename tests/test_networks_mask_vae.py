"""Mask VAE of the VAE alarm on one-hot masks (2D 32x64, 3D 32^3)."""

from __future__ import annotations

import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import MaskVAE, kl_divergence, one_hot_labels, vae_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SHAPES = {2: (32, 64), 3: (32, 32, 32)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mask_vae_forward_backward_and_dice(spatial_dims):
    """recon_logits (B, C, *in_shape), mu/logvar (B, L); reconstruction_dice (B, C) in [0, 1] or NaN."""
    torch.manual_seed(0)
    shape = SHAPES[spatial_dims]
    vae = MaskVAE(spatial_dims, 3, shape, latent_size=8, channels=(4, 8), strides=(2, 2))
    mask = one_hot_labels(torch.randint(0, 3, (2, *shape)), 3)
    recon, mu, logvar = vae(mask)
    assert recon.shape == (2, 3, *shape) and mu.shape == logvar.shape == (2, 8)
    loss = vae_loss(recon, mask, mu, logvar)
    assert loss.ndim == 0 and loss > 0
    loss.backward()
    params = list(vae.parameters())
    assert all(p.grad is not None for p in params)
    assert sum(bool(p.grad.abs().sum() > 0) for p in params) / len(params) >= 0.8

    dice = vae.reconstruction_dice(mask)
    assert dice.shape == (2, 3)
    defined = dice[~torch.isnan(dice)]
    assert defined.numel() > 0 and ((defined >= 0) & (defined <= 1)).all()
    assert vae.training  # mode restored
    vae.eval()
    assert torch.equal(vae(mask)[0], vae(mask)[0])  # posterior mean at inference
    scores = vae.score(mask)
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_vae_loss_terms():
    target = one_hot_labels(torch.tensor([[[0, 1], [1, 0]]]), 2)
    perfect = (target * 2 - 1) * 50.0
    zeros = torch.zeros(1, 4)
    assert kl_divergence(zeros, zeros).item() == 0.0
    assert kl_divergence(torch.ones(1, 4), zeros).item() == pytest.approx(2.0)
    assert vae_loss(perfect, target, zeros, zeros).item() < 1e-4
    wrong = -perfect
    assert vae_loss(wrong, target, zeros, zeros).item() > 1.0
    per_sample = vae_loss(torch.cat([perfect, wrong]), torch.cat([target, target]), zeros.repeat(2, 1),
                          zeros.repeat(2, 1), reduction="none")
    assert per_sample.shape == (2,) and per_sample[0] < per_sample[1]
    assert vae_loss(perfect, target, torch.ones(1, 4), zeros, beta=0.5).item() == pytest.approx(1.0, abs=1e-4)
    # bf16 inputs (autocast) are scored in float32: the loss is the VAE alarm's regression feature
    slightly = perfect * 0.02  # logits of +-1
    full = vae_loss(slightly, target, zeros, zeros, reduction="none")
    half = vae_loss(slightly.bfloat16(), target, zeros.bfloat16(), zeros.bfloat16(), reduction="none")
    assert half.dtype == torch.float32 and torch.allclose(half, full, rtol=1e-6)


def test_mask_vae_rejects_wrong_shape():
    vae = MaskVAE(2, 2, (16, 16), latent_size=4, channels=(4,), strides=(2,))
    with pytest.raises(SynthCPInputError, match="in_shape"):
        vae(torch.zeros(1, 2, 32, 32))
    with pytest.raises(SynthCPInputError):
        vae(torch.zeros(1, 3, 16, 16))
