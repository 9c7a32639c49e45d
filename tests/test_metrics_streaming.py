from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import needs_cuda

import synthcp3d.metrics.streaming as streaming
from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics import (
    StreamingAnomalyMetrics,
    StreamingBinaryCurve,
    StreamingPixelFailureMetrics,
    anomaly_metrics,
    binary_curve_metrics,
    pixel_failure_metrics,
)
from synthcp3d.metrics.curves import threshold_counts, threshold_counts_torch

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

FAILURE = ("AUPR_Error", "AUPR_Success", "AUROC", "FPR95")


def _images(seed: int, num_bins: int | None = None, shapes=((20, 30), (16, 16), (25, 12))):
    """Per-image (score, error) pairs, errors scoring higher; scores snapped to bin centres if ``num_bins``."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        error = rng.random(shape) < 0.25
        score = np.clip(rng.normal(0.35 + 0.3 * error, 0.2), 0, 1)
        if num_bins is not None:
            score = (np.minimum(np.floor(score * num_bins), num_bins - 1) + 0.5) / num_bins
        out.append((score, error))
    return out


def test_bin_centre_scores_give_exactly_the_exact_result():
    num_bins = 64
    images = _images(0, num_bins)
    pooled = StreamingPixelFailureMetrics("pooled", num_bins=num_bins)
    anomaly = StreamingAnomalyMetrics("pooled", num_bins=num_bins)
    for score, error in images:
        pooled.update(score, error)
        anomaly.update(torch.from_numpy(score), torch.from_numpy(error))
    scores, errors = [s for s, _ in images], [e for _, e in images]
    assert pooled.compute() == pixel_failure_metrics(scores, errors, reduction="pooled")
    assert anomaly.compute() == anomaly_metrics(scores, errors, reduction="pooled")
    centres = StreamingBinaryCurve(num_bins).bin_centers().numpy()
    assert np.isin(np.concatenate([s.ravel() for s in scores]), centres).all()


def test_continuous_scores_within_half_a_point_with_2_16_bins():
    images = _images(1, shapes=[(64, 64)] * 4)
    stream = StreamingPixelFailureMetrics("pooled")  # 2**16 bins on (0, 1)
    stream.update_batch([s for s, _ in images], [e for _, e in images])
    exact = pixel_failure_metrics([s for s, _ in images], [e for _, e in images])
    for key in FAILURE:
        assert abs(stream.compute()[key] - exact[key]) < 0.5, key
    coarse = StreamingPixelFailureMetrics("pooled", num_bins=4)  # too few bins: visibly off
    coarse.update_batch([s for s, _ in images], [e for _, e in images])
    assert abs(coarse.compute()["AUPR_Error"] - exact["AUPR_Error"]) > 0.5


def test_per_image_streaming_equals_exact():
    images = _images(2)
    images.append((np.random.default_rng(9).random((5, 5)), np.zeros((5, 5), bool)))  # no error: skipped
    for metric_cls, exact_fn in (
        (StreamingPixelFailureMetrics, pixel_failure_metrics),
        (StreamingAnomalyMetrics, anomaly_metrics),
    ):
        stream = metric_cls("per_image")
        for score, error in images:
            stream.update(score, error)
        exact = exact_fn([s for s, _ in images], [e for _, e in images], reduction="per_image")
        assert stream.compute() == exact
        assert exact["num_images_used"] == 3


def test_out_of_range_scores_are_clamped_and_ignore_is_honoured():
    num_bins, score_range = 8, (-1.0, 1.0)
    curve = StreamingBinaryCurve(num_bins, score_range)
    centres = curve.bin_centers().numpy()
    rng = np.random.default_rng(3)
    score = rng.choice(centres, size=(12, 10))
    target = rng.random((12, 10)) < 0.3
    score[0, :3] = [5.0, np.inf, -np.inf]
    ignore = np.zeros((12, 10), bool)
    ignore[1] = True
    score[1, 0] = np.nan  # ignored: allowed
    assert curve.update(score, target, ignore) == 110
    clamped = np.clip(score, centres[0], centres[-1])
    assert curve.compute() == binary_curve_metrics(clamped, target, ignore)


def test_chunked_binning_and_fixed_memory(monkeypatch):
    images = _images(4, shapes=[(33, 31)] * 3)
    whole = StreamingBinaryCurve(256)
    for score, error in images:
        whole.update(score, error)
    monkeypatch.setattr(streaming, "CHUNK_PIXELS", 100)
    chunked = StreamingBinaryCurve(256)
    for score, error in images:
        chunked.update(score, error)
    assert torch.equal(whole.histogram, chunked.histogram)
    assert chunked.histogram.shape == (256, 2) and int(chunked.histogram.sum()) == 3 * 33 * 31


def test_empty_and_reset():
    stream = StreamingPixelFailureMetrics("pooled", num_bins=16)
    assert all(math.isnan(stream.compute()[key]) for key in FAILURE)
    stream.update(np.array([0.9, 0.1]), np.array([1, 0]))
    assert stream.compute()["AUROC"] == 100.0 and stream.compute()["num_images_used"] == 1
    stream.reset()
    assert math.isnan(stream.compute()["AUROC"]) and stream.compute()["num_images_used"] == 0


def test_bad_arguments():
    with pytest.raises(SynthCPInputError, match="num_bins"):
        StreamingBinaryCurve(0)
    with pytest.raises(SynthCPInputError, match="score_range"):
        StreamingBinaryCurve(8, (1.0, 0.0))
    with pytest.raises(SynthCPInputError, match="reduction"):
        StreamingAnomalyMetrics("sum")
    stream = StreamingAnomalyMetrics("pooled")
    with pytest.raises(SynthCPInputError, match=r"anomaly_score \(image 0\) holds NaN"):
        stream.update(np.array([np.nan, 0.2]), np.array([1, 0]))


@needs_cuda
def test_cpu_and_cuda_agree():
    images = _images(5)
    scores, errors = [s for s, _ in images], [e for _, e in images]
    for reduction in ("pooled", "per_image"):
        cpu = StreamingPixelFailureMetrics(reduction, num_bins=1024, device="cpu")
        gpu = StreamingPixelFailureMetrics(reduction, num_bins=1024, device="cuda")
        for score, error in zip(scores, errors):
            cpu.update(score, error)
            gpu.update(torch.from_numpy(score).cuda(), torch.from_numpy(error).cuda())
        cpu_result, gpu_result = cpu.compute(), gpu.compute()
        if reduction == "pooled":
            assert torch.equal(cpu.curve.histogram, gpu.curve.histogram.cpu())
            assert cpu_result == gpu_result
        for key in FAILURE:
            assert gpu_result[key] == pytest.approx(cpu_result[key], abs=1e-9)
    score, error = torch.from_numpy(scores[0].ravel()), torch.from_numpy(errors[0].ravel())
    positives, negatives = threshold_counts_torch(score.cuda(), error.cuda())
    reference = threshold_counts(score.numpy(), error.numpy())
    assert np.array_equal(positives.cpu().numpy(), reference[0])
    assert np.array_equal(negatives.cpu().numpy(), reference[1])


def test_streaming_reads_foreign_byte_order():
    rng = np.random.default_rng(10)
    target = rng.random((3, 4, 4)) < 0.4
    score = rng.random((3, 4, 4))
    native, swapped = StreamingPixelFailureMetrics(num_bins=64), StreamingPixelFailureMetrics(num_bins=64)
    native.update_batch(score, target)
    swapped.update_batch(score.astype(">f4"), target)
    assert native.compute() == swapped.compute()
