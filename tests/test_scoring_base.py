from __future__ import annotations

import pytest
import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import SCORERS, ScoreOutput, get_scorer, run_scorer
from synthcp3d.scoring.base import inference_mode

EXPECTED = {
    "msp", "entropy", "max_logit", "mc_dropout", "msp_crf", "tcp", "autoencoder",
    "vae_alarm", "synthcp", "direct", "synthcp_anomaly",
}  # fmt: skip


def test_registry_lists_every_method():
    assert EXPECTED <= set(SCORERS)
    for name, spec in SCORERS.items():
        assert spec.name == name and spec.inputs and callable(spec.fn)


def test_run_scorer_picks_its_inputs_and_reports_missing_ones():
    probs = torch.tensor([[0.8, 0.5], [0.2, 0.5]])[None, :, :, None]
    out = run_scorer("msp", {"probs": probs, "unused": object()})
    assert isinstance(out, ScoreOutput) and torch.allclose(out.pixel_error[0, :, 0], torch.tensor([0.2, 0.5]))
    assert out.to_dict().keys() == {"pixel_error", "anomaly"}
    with pytest.raises(SynthCPInputError, match="logits"):
        run_scorer("max_logit", {"probs": probs})
    with pytest.raises(SynthCPInputError, match="known scorers"):
        get_scorer("nope")


def test_inference_mode_restores_every_flag():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2)).train()
    net[2].eval()  # a deliberately frozen submodule
    with inference_mode(net):
        assert not any(m.training for m in net.modules()) and not torch.is_grad_enabled()
    assert [m.training for m in net.modules()] == [True, True, True, False]
