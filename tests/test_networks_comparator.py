"""Siamese comparator (joint / separate / direct), its loss masking and local pretrained weights."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_backward, needs_cuda

from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import ResNetEncoder, SeparateComparator, SiameseComparator, build_comparator, comparator_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

SHAPES = {2: (32, 64), 3: (32, 32, 32)}
TINY = dict(encoder_layers=(1, 1, 1, 1), encoder_channels=(8, 8, 16, 16), decoder_channels=8, quality_hidden=8)


def inputs(spatial_dims: int, batch: int = 2, num_classes: int = 3):
    shape = SHAPES[spatial_dims]
    return torch.randn(batch, 1, *shape), torch.randint(0, num_classes, (batch, *shape)), torch.randn(batch, 1, *shape)


@pytest.mark.parametrize("spatial_dims, shared_encoder", [(2, True), (2, False), (3, True)])
def test_joint_forward_backward(spatial_dims, shared_encoder):
    """quality (B, C) in [0, 1] and error_logits (B, 1, *S) at the input resolution; both heads get gradients."""
    torch.manual_seed(0)
    net = build_comparator(
        "joint", spatial_dims=spatial_dims, image_channels=1, num_classes=3, shared_encoder=shared_encoder,
        **TINY,
    )
    assert (net.encoder_synthesis is None) == shared_encoder
    image, labels, synth = inputs(spatial_dims)
    out = net(image, labels, synth)
    assert set(out) == {"quality", "pooled_features", "error_logits"}
    assert out["pooled_features"].shape == (2, 2 * net.encoder.out_channels[-1])  # both branches, concatenated
    assert out["quality"].shape == (2, 3) and ((out["quality"] >= 0) & (out["quality"] <= 1)).all()
    assert out["error_logits"].shape == (2, 1, *SHAPES[spatial_dims])
    quality = torch.rand(2, 3)
    errors = (torch.rand(2, *SHAPES[spatial_dims]) > 0.5).to(torch.uint8)
    total, parts = comparator_loss(out, quality, errors)
    assert set(parts) == {"quality_l1", "error_bce"}
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()))
    total.backward()
    assert_backward(net)


def test_synthesis_changes_the_output_and_is_required():
    torch.manual_seed(0)
    net = build_comparator("joint", spatial_dims=2, image_channels=1, num_classes=3, **TINY).eval()
    image, labels, synth = inputs(2)
    a, b = net(image, labels, synth), net(image, labels, synth + 1)
    assert not torch.allclose(a["error_logits"], b["error_logits"])
    with pytest.raises(SynthCPInputError, match="synthesis"):
        net(image, labels)
    with pytest.raises(SynthCPInputError):
        net(image, labels, synth[..., :32])
    with pytest.raises(SynthCPInputError):
        net(image[:, :, :16], labels, synth)  # segmentation / image size mismatch


def test_difference_margin_keeps_the_difference_near_the_foreground_only():
    """|x - x̂| survives within the margin of the segmented foreground and is zero beyond it (3D, one-hot)."""
    net = build_comparator("joint", spatial_dims=3, image_channels=1, num_classes=3, difference_input=True,
                           difference_margin=2, **TINY)
    image, synthesis = torch.zeros(1, 1, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    labels[0, 6:9, 6:9, 6:9] = 2
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    diff = net._difference(image, synthesis, onehot)[0, 0]
    assert diff[4:11, 4:11, 4:11].eq(1).all() and diff.sum() == 7**3  # the 3^3 block grown by 2 voxels per side
    full = build_comparator("joint", spatial_dims=3, image_channels=1, num_classes=3, difference_input=True, **TINY)
    assert full._difference(image, synthesis, onehot).eq(1).all()
    with pytest.raises(ValueError, match="difference_margin"):
        build_comparator("joint", spatial_dims=3, image_channels=1, num_classes=3, difference_margin=-1, **TINY)


def test_modes_give_expected_keys():
    image, labels, synth = inputs(2)
    direct = build_comparator("direct", spatial_dims=2, image_channels=1, num_classes=3, **TINY)
    assert not direct.use_synthesis and set(direct(image, labels)) == {"quality", "pooled_features", "error_logits"}
    separate = build_comparator("separate", spatial_dims=2, image_channels=1, num_classes=3, heads=("error",), **TINY)
    assert isinstance(separate, SeparateComparator)
    assert separate.quality_net.heads == ("quality",) and separate.error_net.heads == ("error",)
    out = separate(image, labels, synth)
    assert set(out) == {"quality", "pooled_features", "error_logits"} and out["quality"].shape == (2, 3)
    only_q = build_comparator("joint", spatial_dims=2, image_channels=1, num_classes=3, heads=("quality",), **TINY)
    assert set(only_q(image, labels, synth)) == {"quality", "pooled_features"}
    only_e = SiameseComparator(2, 1, 3, heads=("error",), **TINY)
    assert set(only_e(image, labels, synth)) == {"error_logits"}
    with pytest.raises(SynthCPInputError, match="mode"):
        build_comparator("siamese", spatial_dims=2, image_channels=1, num_classes=3)


def test_segmentation_inputs_onehot_and_softmax():
    torch.manual_seed(0)
    image, labels, synth = inputs(2)
    net = SiameseComparator(2, 1, 3, **TINY).eval()
    onehot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    assert torch.allclose(net(image, labels, synth)["quality"], net(image, onehot, synth)["quality"])
    assert torch.allclose(net(image, labels[:, None], synth)["quality"], net(image, onehot, synth)["quality"])
    soft = SiameseComparator(2, 1, 3, seg_input="softmax", squeeze_channels=2, **TINY)
    probs = torch.rand(2, 3, *SHAPES[2]).softmax(1)
    out = soft(image, probs, synth)
    out["quality"].sum().backward()
    assert soft.squeeze.conv.weight.grad.abs().sum() > 0
    with pytest.raises(SynthCPInputError, match="softmax"):
        soft(image, labels, synth)


def test_comparator_loss_masks_nan_quality_and_ignored_pixels():
    torch.manual_seed(0)
    quality = torch.rand(2, 3, requires_grad=True)
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    q_target = torch.rand(2, 3)
    q_target[0, 1] = q_target[1, 2] = float("nan")
    e_target = (torch.rand(2, 4, 4) > 0.5).to(torch.uint8)
    e_target[0, :2] = 255
    total, parts = comparator_loss({"quality": quality, "error_logits": logits}, q_target, e_target)
    assert torch.isfinite(total)

    q2, l2 = quality.detach().clone(), logits.detach().clone()
    q2[0, 1] += 0.5
    q2[1, 2] -= 0.5
    l2[0, 0, :2] += 10.0
    _, parts2 = comparator_loss({"quality": q2, "error_logits": l2}, q_target, e_target)
    assert parts2["quality_l1"].item() == pytest.approx(parts["quality_l1"].item())
    assert parts2["error_bce"].item() == pytest.approx(parts["error_bce"].item())

    q2[0, 0] += 0.3  # a defined entry does count
    l2[1, 0, 0, 0] += 3.0
    _, parts3 = comparator_loss({"quality": q2, "error_logits": l2}, q_target, e_target[:, None])  # (B, 1, *S) ok
    assert parts3["quality_l1"].item() != pytest.approx(parts["quality_l1"].item())
    assert parts3["error_bce"].item() != pytest.approx(parts["error_bce"].item())

    # the masked L1 is the plain mean over defined entries
    mask = ~torch.isnan(q_target)
    assert parts["quality_l1"].item() == pytest.approx((quality - q_target).abs()[mask].mean().item())

    total.backward()
    assert quality.grad[0, 1] == 0 and quality.grad[1, 2] == 0 and quality.grad[0, 0] != 0
    assert (logits.grad[0, 0, :2] == 0).all() and logits.grad[0, 0, 2:].abs().sum() > 0


def test_comparator_loss_all_masked_is_zero_with_graph():
    quality = torch.rand(1, 2, requires_grad=True)
    logits = torch.randn(1, 1, 2, 2, requires_grad=True)
    total, parts = comparator_loss(
        {"quality": quality, "error_logits": logits}, torch.full((1, 2), float("nan")), torch.full((1, 2, 2), 255)
    )
    assert total.item() == 0.0
    total.backward()
    assert quality.grad is not None and (quality.grad == 0).all()
    with pytest.raises(ValueError):
        comparator_loss({"quality": quality})


def test_pretrained_path_loads_local_weights(tmp_path):
    source = ResNetEncoder(2, in_channels=3, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16))
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in source.net.state_dict().items()}}, path)
    net = SiameseComparator(2, 1, 3, shared_encoder=False, pretrained_path=path, **TINY)
    for enc in (net.encoder, net.encoder_synthesis):
        assert torch.equal(enc.net.layer1[0].conv1.weight, source.net.layer1[0].conv1.weight)
        # stem: 1 image + 3 one-hot channels; the 3 source channels are copied into the first 3
        assert torch.equal(enc.net.conv1.weight[:, :3], source.net.conv1.weight)
    with pytest.raises(SynthCPInputError, match="does not exist"):
        SiameseComparator(2, 1, 3, pretrained_path=tmp_path / "missing.pt", **TINY)


@needs_cuda
def test_joint_comparator_on_cuda():
    net = build_comparator("joint", spatial_dims=3, image_channels=1, num_classes=3, **TINY).cuda()
    image, labels, synth = (t.cuda() for t in inputs(3))
    out = net(image, labels, synth)
    total, _ = comparator_loss(out, torch.rand(2, 3, device="cuda"), torch.zeros(2, *SHAPES[3], device="cuda"))
    total.backward()
    assert out["error_logits"].device.type == "cuda" and torch.isfinite(total)


def test_bce_quality_loss_keeps_a_gradient_where_l1_vanishes():
    from synthcp3d.networks.comparator import comparator_loss

    logits = torch.tensor([[-6.0, 0.0]], requires_grad=True)  # a head saturated near 0, and a neutral one
    target = torch.tensor([[0.8, float("nan")]])
    grads = {}
    for kind in ("l1", "bce"):
        logits.grad = None
        loss, parts = comparator_loss({"quality": torch.sigmoid(logits)}, target, quality_loss=kind)
        loss.backward()
        grads[kind] = logits.grad[0, 0].item()
        assert set(parts) == {f"quality_{kind}"} and logits.grad[0, 1].item() == 0.0  # NaN target masked
    p = torch.sigmoid(torch.tensor(-6.0)).item()
    assert grads["l1"] == pytest.approx(-p * (1 - p), rel=1e-4)  # tiny
    assert grads["bce"] == pytest.approx(p - 0.8, rel=1e-4)  # p - y
    with pytest.raises(SynthCPInputError, match="quality_loss"):
        comparator_loss({"quality": torch.sigmoid(logits)}, target, quality_loss="mse")
