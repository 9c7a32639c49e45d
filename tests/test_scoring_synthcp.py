from __future__ import annotations

import pytest
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import comparator_scores, run_scorer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


class StandInComparator(nn.Module):
    """``forward(image, segmentation, synthesis=None) -> dict(quality, error_logits)``; remembers its last input."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.num_classes = num_classes
        self.last_synthesis: torch.Tensor | None = None

    def forward(self, image, segmentation, synthesis=None):
        self.last_synthesis = synthesis
        other = image if synthesis is None else synthesis
        error_logits = self.scale * (image - other).abs().mean(1, keepdim=True) - 1.0
        quality = torch.sigmoid(segmentation.flatten(2).mean(-1))
        return {"quality": quality, "error_logits": error_logits}


@pytest.mark.parametrize("spatial", [(4, 6), (2, 4, 4)])
def test_synthcp_and_direct(spatial):
    comparator = StandInComparator().train()
    image = torch.randn(2, 1, *spatial)
    seg = nn.functional.one_hot(torch.randint(0, 3, (2, *spatial)), 3).movedim(-1, 1).float()
    synthesis = torch.randn_like(image)
    out = comparator_scores(comparator, image, seg, synthesis)
    assert out.quality.shape == (2, 3) and out.pixel_error.shape == (2, *spatial)
    assert ((out.pixel_error > 0) & (out.pixel_error < 1)).all() and comparator.training
    expected = torch.sigmoid((image - synthesis).abs().mean(1) - 1.0)
    assert torch.allclose(out.pixel_error, expected)
    inputs = {"comparator": comparator, "image": image, "segmentation": seg, "synthesis": synthesis}
    assert torch.equal(run_scorer("synthcp", inputs).pixel_error, out.pixel_error)
    direct = run_scorer("direct", {**inputs, "direct_comparator": comparator})  # never sees the synthesis
    assert comparator.last_synthesis is None
    assert torch.allclose(direct.pixel_error, torch.full_like(direct.pixel_error, torch.sigmoid(torch.tensor(-1.0))))


def test_heads_subset_and_bad_shapes():
    class QualityOnly(nn.Module):
        def forward(self, image, segmentation, synthesis=None):
            return {"quality": torch.full((image.shape[0], segmentation.shape[1]), 0.5)}

    out = comparator_scores(QualityOnly(), torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    assert out.pixel_error is None and out.to_dict().keys() == {"quality"}
    with pytest.raises(SynthCPInputError):
        comparator_scores(QualityOnly(), torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))
