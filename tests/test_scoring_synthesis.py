"""Class-mean painter and synthesis-quality measure, checked against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.synthesis import ClassMeanPainter, blank_like, synthesis_quality


def _pairs(rng, n=3, shape=(12, 10, 8)):
    out = []
    for _ in range(n):
        label = rng.integers(0, 3, size=shape)
        image = np.choose(label, [-0.5, 0.2, 0.6]) + rng.normal(0, [[[0.1]]], size=shape) * (1 + label)
        out.append((image[None].astype(np.float32), label))
    return out


def test_painter_statistics_match_numpy():
    rng = np.random.default_rng(0)
    pairs = _pairs(rng)
    painter = ClassMeanPainter(3).fit(pairs)
    images = np.concatenate([p[0][0].ravel() for p in pairs])
    labels = np.concatenate([p[1].ravel() for p in pairs])
    for c in range(3):
        assert painter.mean[c, 0] == pytest.approx(images[labels == c].astype(np.float64).mean(), abs=1e-9)
        assert painter.std[c, 0] == pytest.approx(images[labels == c].astype(np.float64).std(), abs=1e-9)


def test_painter_paints_means_and_noise_reproducibly():
    rng = np.random.default_rng(1)
    painter = ClassMeanPainter(3).fit(_pairs(rng))
    label = torch.as_tensor(rng.integers(0, 3, size=(2, 16, 16, 8)))
    flat = painter(label, noise=False)
    assert flat.shape == (2, 1, 16, 16, 8)
    for c in range(3):
        assert torch.allclose(flat[:, 0][label == c], torch.tensor(painter.mean[c, 0], dtype=torch.float32))
    a, b, other = painter(label, seed=3), painter(label, seed=3), painter(label, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, other)
    noise_sd = float((a - flat)[:, 0][label == 2].std())
    assert noise_sd == pytest.approx(painter.std[2, 0], rel=0.15)
    again = ClassMeanPainter.from_state_dict(painter.state_dict())
    assert torch.equal(again(label, seed=3), a)


def test_painter_unseen_class_gets_overall_mean_and_empty_input_refused():
    painter = ClassMeanPainter(4).fit([(np.array([[1.0, 3.0]]), np.array([0, 1]))])
    assert painter.mean[3, 0] == pytest.approx(2.0)
    with pytest.raises(SynthCPInputError):
        ClassMeanPainter(2).fit([])


def test_synthesis_quality_against_numpy():
    rng = np.random.default_rng(2)
    label = torch.as_tensor(rng.integers(0, 2, size=(16, 16, 12)))
    real = torch.as_tensor(rng.normal(size=(1, 16, 16, 12)).astype(np.float32))
    synth = real + 0.3 * (label == 1)
    q = synthesis_quality(synth, real, label, ["bg", "fg", "absent"], scale=170.0)
    assert q["mean_error/fg"] == pytest.approx(0.3 * 170.0, rel=1e-5)
    assert q["mae/fg"] == pytest.approx(0.3 * 170.0, rel=1e-5)
    assert q["mean_error/bg"] == pytest.approx(0.0, abs=1e-4)
    assert np.isnan(q["mean_error/absent"]) and np.isnan(q["mae/absent"])
    assert synthesis_quality(real, real, label, ["bg", "fg"])["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert q["ssim"] < 1.0
    assert torch.equal(blank_like(real), torch.zeros_like(real))
    with pytest.raises(SynthCPInputError):
        synthesis_quality(real[:, :8], real, label, ["bg"])
