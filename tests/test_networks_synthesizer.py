"""SPADE generator, multi-scale discriminator and GAN losses on tiny 2D (32x64) and 3D (32^3) inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_backward

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import (
    SPADE_OPTIMIZER_DEFAULTS,
    HingeGANLoss,
    LocalPerceptualLoss,
    SPADEGenerator,
    build_discriminator,
    discriminator_input,
    feature_matching_loss,
    make_gan_optimizers,
    one_hot_labels,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SHAPES = {2: (32, 64), 3: (32, 32, 32)}


def test_one_hot_labels_shapes_and_ignore():
    labels = torch.tensor([[[0, 1], [2, 255]]])  # (1, 2, 2)
    oh = one_hot_labels(labels, 3, ignore_index=255)
    assert oh.shape == (1, 3, 2, 2) and oh.dtype == torch.float32
    assert oh[0, :, 1, 1].sum() == 0  # ignore -> all zeros
    assert torch.equal(oh[0, :, 0, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(oh.sum(1)[0], torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    # (B, 1, *S) input gives the same result
    assert torch.equal(one_hot_labels(labels[:, None], 3, ignore_index=255), oh)


def test_one_hot_labels_rejects_undeclared_label():
    with pytest.raises(SynthCPInputError, match="outside"):
        one_hot_labels(torch.tensor([[0, 3]]), 3)
    with pytest.raises(SynthCPInputError):
        one_hot_labels(torch.tensor([[0, 255]]), 3)  # 255 without ignore_index is a bad label


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_generator_discriminator_forward_backward(spatial_dims):
    """G: (B, C, *S) -> (B, 1, *S) in [-1, 1]; D on concat(image, onehot): num_d patch logits + features."""
    torch.manual_seed(0)
    shape = SHAPES[spatial_dims]
    gen = SPADEGenerator(spatial_dims, num_classes=3, out_channels=1, channels=(16, 8, 8), spade_hidden_channels=8)
    disc = build_discriminator(spatial_dims, num_classes=3, image_channels=1, num_d=2, num_layers_d=1, channels=8)
    onehot = one_hot_labels(torch.randint(0, 3, (1, *shape)), 3)
    fake = gen(onehot)
    assert fake.shape == (1, 1, *shape)
    assert fake.min() >= -1 and fake.max() <= 1
    outs, feats = disc(discriminator_input(fake, onehot))
    assert len(outs) == 2 and len(feats) == 2 and all(o.shape[:2] == (1, 1) for o in outs)
    real_outs, real_feats = disc(discriminator_input(torch.rand(1, 1, *shape) * 2 - 1, onehot))
    loss = HingeGANLoss().generator_loss(outs) + feature_matching_loss(real_feats, feats)
    loss.backward()
    assert_backward(gen)
    d_loss = HingeGANLoss().discriminator_loss(real_outs, [o.detach() for o in outs])
    disc.zero_grad()
    d_loss.backward()
    assert_backward(disc)


def test_generator_accepts_any_size_divisible_by_upsampling_factor():
    gen = SPADEGenerator(2, num_classes=2, channels=(8, 8, 8), spade_hidden_channels=4)  # 2 upsamplings
    for shape in [(16, 48), (32, 32), (4, 8)]:
        assert gen(torch.rand(2, 2, *shape)).shape == (2, 1, *shape)
    with pytest.raises(SynthCPInputError, match="divisible"):
        gen(torch.rand(1, 2, 18, 32))
    with pytest.raises(SynthCPInputError):
        gen(torch.rand(1, 3, 16, 16))  # wrong number of classes
    linear = SPADEGenerator(2, num_classes=2, channels=(8, 8), output_activation=None)
    with torch.no_grad():
        for p in linear.final.parameters():
            p.fill_(1.0)
    assert linear(torch.rand(1, 2, 8, 8)).abs().max() > 1  # no tanh


def test_hinge_losses_values():
    loss = HingeGANLoss()
    real, fake = [torch.full((1, 1, 2, 2), 2.0)], [torch.full((1, 1, 2, 2), -2.0)]
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(0.0)  # both beyond the margin
    assert loss.discriminator_loss(fake, real).item() == pytest.approx(6.0)  # relu(1+2) + relu(1+2)
    assert loss.generator_loss([torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 1, 1), 1.5)]).item() == -1.0
    # bf16 logits (autocast) are reduced in float32: relu(1 - (-0.001)) is 1.001, which bf16 would round to 1.0
    logits = [torch.full((1, 1, 10, 100), -0.001, dtype=torch.bfloat16)]
    d_loss = loss.discriminator_loss(logits, [torch.zeros(1, 1, 2, 2)])
    assert d_loss.dtype == torch.float32 and d_loss.item() == pytest.approx(2.001, abs=1e-5)
    assert loss.generator_loss(logits).dtype == torch.float32
    monai_loss = HingeGANLoss(implementation="monai")  # MONAI squashes the logits by tanh first
    expected = 2 * (1 - torch.tanh(torch.tensor(2.0))).item()
    assert monai_loss.discriminator_loss(real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_feature_matching_loss_weighting():
    real = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 2, 2)]]
    fake = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)], [torch.full((1, 2, 2, 2), 2.0)]]
    # (1 + 0 + 2) * 10 / 2 discriminators
    assert feature_matching_loss(real, fake).item() == pytest.approx(15.0)
    assert feature_matching_loss(real, real, weight=1.0).item() == 0.0


def test_make_gan_optimizers_ttur_defaults():
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt_g, opt_d = make_gan_optimizers(g, d)
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    assert opt_g.param_groups[0]["betas"] == (0.0, 0.9) == SPADE_OPTIMIZER_DEFAULTS["betas"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_local_perceptual_loss(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()))
    path = tmp_path / "feat.pt"
    torch.jit.save(net, str(path))
    loss = LocalPerceptualLoss(path, spatial_dims=3, net_in_channels=3, weight=1.0)
    assert not any(p.requires_grad for p in loss.parameters())
    a = torch.rand(2, 1, 8, 8, 4, requires_grad=True)
    assert loss(a, a.detach()).item() == 0.0
    value = loss(a, torch.rand(2, 1, 8, 8, 4))
    value.backward()
    assert value.item() > 0 and a.grad.abs().sum() > 0
    with pytest.raises(SynthCPInputError, match="does not exist"):
        LocalPerceptualLoss(tmp_path / "missing.pt", spatial_dims=2)
    (tmp_path / "junk.pt").write_text("not a network")
    with pytest.raises(SynthCPInputError, match="neither"):
        LocalPerceptualLoss(tmp_path / "junk.pt", spatial_dims=2)
