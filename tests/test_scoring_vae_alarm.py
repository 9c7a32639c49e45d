from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import synthcp3d.networks as networks
from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import mean_ensemble, per_class_vae_feature, run_scorer, vae_alarm_feature
from synthcp3d.scoring.regression import LinearQualityRegressor

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _stand_in_vae_loss(recon_logits, target_onehot, mu, logvar, beta: float = 0.1) -> torch.Tensor:
    recon = nn.functional.binary_cross_entropy_with_logits(recon_logits, target_onehot)
    kl = -0.5 * torch.mean(1 + logvar - mu**2 - logvar.exp())
    return recon + beta * kl


class StandInMaskVAE(nn.Module):
    """Stand-in with the MaskVAE API: ``in_shape``, ``forward -> (recon_logits, mu, logvar)``, reconstruction_dice."""

    def __init__(self, num_classes: int = 3, in_shape: tuple[int, ...] = (8, 8, 8)) -> None:
        super().__init__()
        self.in_shape = in_shape
        self.encode = nn.Conv3d(num_classes, 2, 1)
        self.decode = nn.Conv3d(1, num_classes, 1)

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stats = self.encode(mask)
        mu, logvar = stats[:, :1], stats[:, 1:]
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z), mu, logvar

    def reconstruction_dice(self, mask: torch.Tensor) -> torch.Tensor:
        recon = torch.sigmoid(self(mask)[0]) > 0.5
        inter = (recon * mask).flatten(2).sum(-1)
        return 2 * inter / (recon.flatten(2).sum(-1) + mask.flatten(2).sum(-1)).clamp_min(1e-6)


@pytest.fixture(autouse=True)
def vae_loss_api(monkeypatch):
    if not hasattr(networks, "vae_loss"):
        monkeypatch.setattr(networks, "vae_loss", _stand_in_vae_loss, raising=False)


def make_vae() -> nn.Module:
    """The networks package's MaskVAE when it is there (tiny), the stand-in otherwise."""
    if hasattr(networks, "MaskVAE"):
        return networks.MaskVAE(3, 3, (8, 8, 8), latent_size=2, channels=(4, 4), strides=(2, 2))
    return StandInMaskVAE()


def masks(batch: int = 3) -> torch.Tensor:
    labels = torch.randint(0, 3, (batch, 8, 8, 8))
    return nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()


def test_features_loss_and_dice():
    torch.manual_seed(0)
    vae = make_vae().train()
    mask = masks()
    loss = vae_alarm_feature(vae, mask)  # default: the VAE loss
    assert loss.shape == (3,) and torch.isfinite(loss).all() and vae.training
    expected = []
    with torch.no_grad():
        vae.eval()
        for item in mask.split(1):  # per mask, not a batch mean; posterior mean (eval) so calls agree
            recon_logits, mu, logvar = vae(item)
            expected.append(networks.vae_loss(recon_logits, item, mu, logvar, beta=0.3))
        vae.train()
    got = vae_alarm_feature(vae, mask, beta=0.3)
    assert torch.allclose(got, torch.stack(expected).reshape(3), atol=1e-6)
    assert torch.equal(vae_alarm_feature(vae, mask, beta=0.3), got)
    dice = vae_alarm_feature(vae, mask, feature="dice")
    assert dice.shape == (3,) and ((dice[~dice.isnan()] >= 0) & (dice[~dice.isnan()] <= 1)).all()
    with pytest.raises(SynthCPInputError):
        vae_alarm_feature(vae, mask[..., :2])
    with pytest.raises(SynthCPInputError, match="feature"):
        vae_alarm_feature(vae, mask, feature="other")


def test_registered_scorer_is_the_per_class_regression_of_the_loss_and_ensembles_with_synthcp():
    torch.manual_seed(0)
    vae, mask = make_vae(), masks(2)
    losses = vae_alarm_feature(vae, mask).numpy()
    # a per-class linear map fitted on two (feature, quality) pairs: quality = 0.2 + 0.6 * (loss - l0) / (l1 - l0)
    feats = np.repeat(losses[:, None], 3, axis=1)
    true = np.array([[0.9, 0.5, 0.2], [0.9, 0.7, 0.8]])
    regressor = LinearQualityRegressor(3, missing_feature_quality=0.0).fit(feats, true)
    out = run_scorer("vae_alarm", {"vae": vae, "vae_mask": mask, "vae_regressor": regressor})
    assert out.quality.shape == (2, 3)
    np.testing.assert_allclose(out.quality.numpy(), true, atol=1e-5)  # two points: the fit passes through both
    regressor.vae_feature = "dice"  # the named variant: per-class reconstruction Dice as the feature
    dice = run_scorer("vae_alarm", {"vae": vae, "vae_mask": mask, "vae_regressor": regressor}).quality
    expected = regressor.predict(np.stack([per_class_vae_feature(vae, m[None], "dice") for m in mask]))
    assert torch.equal(dice, expected)
    synthcp_quality = torch.tensor([[0.9, 0.6, 0.2], [0.8, 0.5, 0.4]])
    assert torch.allclose(mean_ensemble(synthcp_quality, out.quality), (synthcp_quality + out.quality) / 2)
