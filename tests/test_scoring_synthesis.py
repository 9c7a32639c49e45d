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


def test_rgb_painter_and_quality_against_numpy_on_a_known_2d_example(tmp_path):
    """Three colour channels in 2D: the painter's per-channel means and the per-class mean colour error by hand."""
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    image = np.zeros((3, 2, 4), dtype=np.float32)
    image[:, label == 0] = np.array([[-1.0], [0.0], [0.5]])  # class 0: one colour
    image[:, label == 1] = np.array([[0.2, 0.4, 0.6], [0.0, 0.0, 0.0], [-0.5, -0.5, -0.5]])
    image[:, label == 255] = 0.9  # an ignore pixel: counted for no class
    painter = ClassMeanPainter(2, image_channels=3).fit([(image, label)])
    np.testing.assert_allclose(painter.mean, [[-1.0, 0.0, 0.5], [0.4, 0.0, -0.5]], atol=1e-7)
    np.testing.assert_allclose(painter.std[1], [np.std([0.2, 0.4, 0.6]), 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(painter.overall_mean, (4 * painter.mean[0] + 3 * painter.mean[1]) / 7, atol=1e-7)
    flat = painter(torch.as_tensor(label)[None], noise=False, ignore_index=255)[0].numpy()
    assert flat.shape == (3, 2, 4)
    np.testing.assert_allclose(flat[:, 1, 3], painter.overall_mean, atol=1e-6)  # ignore -> overall mean
    np.testing.assert_allclose(flat[:, 0, 2], painter.mean[1], atol=1e-6)
    noisy = painter(torch.as_tensor(label)[None], seed=5, ignore_index=255)[0].numpy()
    assert noisy[0, 1, 3] == pytest.approx(flat[0, 1, 3])  # no noise where no class is known
    painter.save(tmp_path / "painter.json")
    assert torch.equal(ClassMeanPainter.load(tmp_path / "painter.json")(torch.as_tensor(label)[None], seed=5,
                                                                         ignore_index=255)[0], torch.as_tensor(noisy))
    with pytest.raises(SynthCPInputError, match="missing"):
        ClassMeanPainter.load(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SynthCPInputError, match="unreadable"):
        ClassMeanPainter.load(tmp_path / "bad.json")
    # the synthesis-quality measure, by hand: the painter's flat image against the real one, in 0-255 levels
    q = synthesis_quality(torch.as_tensor(flat), torch.as_tensor(image), torch.as_tensor(label), ["a", "b"],
                          scale=127.5)
    assert q["mean_error/a"] == pytest.approx(0.0, abs=1e-4) and q["mean_error/b"] == pytest.approx(0.0, abs=1e-4)
    assert q["mae/b"] == pytest.approx(127.5 * np.mean([0.2, 0.0, 0.2]) / 3, rel=1e-5)  # red only: |x - 0.4|
    shifted = torch.as_tensor(image).clone()
    shifted[0] += 0.3  # red +0.3 everywhere: mean colour error = 0.3 / 3 channels, in levels
    q2 = synthesis_quality(shifted, torch.as_tensor(image), torch.as_tensor(label), ["a", "b"], scale=127.5)
    assert q2["mean_error/a"] == pytest.approx(127.5 * 0.1, rel=1e-5)


def test_ssim_trivial_cases_rgb():
    """MONAI's SSIM as used here: 1 for identical images, the mean over channels, below 1 for a noisy copy."""
    rng = np.random.default_rng(3)
    real = torch.as_tensor(rng.uniform(-1, 1, size=(3, 16, 24)).astype(np.float32))
    label = torch.zeros(16, 24, dtype=torch.long)
    assert synthesis_quality(real, real, label, ["a"])["ssim"] == pytest.approx(1.0, abs=1e-5)
    other = real.clone()
    other[1] = torch.as_tensor(rng.uniform(-1, 1, size=(16, 24)).astype(np.float32))  # one channel replaced
    per_channel = [synthesis_quality(other[c:c + 1], real[c:c + 1], label, ["a"])["ssim"] for c in range(3)]
    assert per_channel[0] == pytest.approx(1.0, abs=1e-5) and per_channel[1] < 0.2
    assert synthesis_quality(other, real, label, ["a"])["ssim"] == pytest.approx(np.mean(per_channel), abs=1e-5)
