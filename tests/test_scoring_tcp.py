from __future__ import annotations

import pytest
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import run_scorer, tcp_error_score, tcp_loss, true_class_probability

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 4)])
def test_tcp_target_is_the_label_probability(spatial):
    torch.manual_seed(0)
    probs = torch.randn(2, 4, *spatial).softmax(1)
    label = torch.randint(0, 4, (2, *spatial))
    label.view(-1)[0] = 255
    tcp = true_class_probability(probs, label, ignore_index=255)
    assert tcp.shape == (2, *spatial) and torch.isnan(tcp.view(-1)[0])
    flat_probs, flat_label = probs.movedim(1, -1).reshape(-1, 4), label.reshape(-1)
    for i in range(1, flat_label.numel()):
        assert tcp.view(-1)[i] == flat_probs[i, flat_label[i]]
    torch.testing.assert_close(true_class_probability(probs, label[:, None], 255), tcp, equal_nan=True)


def test_tcp_label_out_of_range():
    with pytest.raises(SynthCPInputError, match="outside"):
        true_class_probability(torch.full((1, 2, 2, 2), 0.5), torch.full((1, 2, 2), 7))


def test_tcp_loss_masked_and_upsampled():
    target = torch.tensor([[[0.5, 1.0], [float("nan"), 0.0]]])  # (1, 2, 2)
    head = torch.tensor([[[[0.5]]]], requires_grad=True)  # (1, 1, 1, 1): upsampled to 2x2
    loss = tcp_loss(head, target)
    assert loss.item() == pytest.approx((0.0 + 0.25 + 0.25) / 3)
    loss.backward()
    assert head.grad is not None and torch.isfinite(head.grad).all()
    assert tcp_loss(head, torch.full((1, 2, 2), float("nan"))).item() == 0.0


def test_tcp_error_score_and_registered_scorer():
    head = torch.tensor([[[[0.9, 0.2]]]])
    assert torch.allclose(tcp_error_score(head), torch.tensor([[[0.1, 0.8]]]))
    assert tcp_error_score(head, output_size=(2, 4)).shape == (1, 2, 4)

    class Segmenter(nn.Module):
        def forward_features(self, x):
            return x.repeat(1, 2, 1, 1), nn.functional.avg_pool2d(x, 2)

    confidnet = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sigmoid())
    out = run_scorer("tcp", {"segmenter": Segmenter(), "confidnet": confidnet, "image": torch.randn(2, 1, 4, 6)})
    assert out.pixel_error.shape == (2, 4, 6) and ((out.pixel_error >= 0) & (out.pixel_error <= 1)).all()
