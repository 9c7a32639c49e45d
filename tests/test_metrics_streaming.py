from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import needs_cuda
from sklearn.metrics import average_precision_score, roc_auc_score

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
from synthcp3d.metrics.streaming import float_order_keys

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

FAILURE = ("AUPR_Error", "AUPR_Success", "AUROC", "FPR95")


def _images(seed: int, grid: int | None = None, shapes=((20, 30), (16, 16), (25, 12))):
    """Per-image (score, error) pairs, errors scoring higher; scores snapped to multiples of 1/grid if ``grid``."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in shapes:
        error = rng.random(shape) < 0.25
        score = np.clip(rng.normal(0.35 + 0.3 * error, 0.2), 0, 1)
        if grid is not None:
            score = np.round(score * grid) / grid
        out.append((score, error))
    return out


def test_pooled_equals_the_exact_result_until_the_table_is_full():
    """Ties included (scores on a grid of 1/64): bit for bit, as long as the distinct scores fit in ``max_bins``."""
    images = _images(0, grid=64)
    pooled = StreamingPixelFailureMetrics("pooled", max_bins=512)
    anomaly = StreamingAnomalyMetrics("pooled", max_bins=512)
    for score, error in images:
        pooled.update(score, error)
        anomaly.update(torch.from_numpy(score), torch.from_numpy(error))
    scores, errors = [s for s, _ in images], [e for _, e in images]
    assert pooled.compute() == {**pixel_failure_metrics(scores, errors, reduction="pooled"), "precision_bits": 23}
    assert anomaly.compute() == {**anomaly_metrics(scores, errors, reduction="pooled"), "precision_bits": 23}


def test_a_full_table_rounds_scores_to_fewer_bits_whatever_their_order():
    images = _images(1, shapes=[(64, 64)] * 4)
    scores, errors = [s for s, _ in images], [e for _, e in images]
    exact = pixel_failure_metrics(scores, errors)
    stream = StreamingPixelFailureMetrics("pooled", max_bins=4096)  # 16384 distinct scores: rounded
    stream.update_batch(scores, errors)
    result = stream.compute()
    bits = result["precision_bits"]
    assert bits < 23
    for key in FAILURE:
        assert abs(result[key] - exact[key]) < 0.5, key
    # the largest precision that fits, and the exact metric of the scores rounded to it (keys rank as the bins)
    flat_score, flat_error = np.concatenate([s.ravel() for s in scores]), np.concatenate([e.ravel() for e in errors])
    keys = {b: float_order_keys(torch.from_numpy(flat_score), b).numpy() for b in (bits, bits + 1)}
    assert len(np.unique(keys[bits])) <= 4096 < len(np.unique(keys[bits + 1]))
    rounded = pixel_failure_metrics([keys[bits].astype(np.float64)], [flat_error], reduction="pooled")
    assert {k: result[k] for k in FAILURE} == {k: rounded[k] for k in FAILURE}
    # whatever the order and the cut of the pixels into images
    order = np.random.default_rng(2).permutation(flat_score.size)
    shuffled = StreamingPixelFailureMetrics("pooled", max_bins=4096)
    for part in np.array_split(order, 7):
        shuffled.update(flat_score[part], flat_error[part])
    assert shuffled.compute() == {**result, "num_images_used": 7}


def test_saturated_scores_keep_their_ranking_when_rounded():
    """Softmax-like scores piled up near 0 (the normals below 1e-4, half the anomalies too), against scikit-learn:
    rounded bins keep a relative width, where equal-width bins on (0, 1) would put all of those into one bin."""
    rng = np.random.default_rng(11)
    is_anomaly = rng.random(20000) < 0.1
    score = np.where(is_anomaly, 10 ** rng.uniform(-8, 0, is_anomaly.size), 10 ** rng.uniform(-12, -4, is_anomaly.size))
    curve = StreamingBinaryCurve(max_bins=2048)
    curve.update(score.astype(np.float32), is_anomaly)
    assert curve.precision_bits < 23
    assert curve.compute()["AUROC"] == pytest.approx(100 * roc_auc_score(is_anomaly, score), abs=0.05)
    assert curve.compute()["AUPR"] == pytest.approx(100 * average_precision_score(is_anomaly, score), abs=0.2)


def test_float_order_keys_keep_the_order_of_any_real():
    values = np.array([-np.inf, -3e38, -1.5, -1e-30, -1e-45, 0.0, 1e-45, 1e-38, 1e-30, 0.25, 1.0, 3e38, np.inf])
    assert (float_order_keys(torch.tensor(values, dtype=torch.float32)).diff() > 0).all()
    rng = np.random.default_rng(12)
    dense = np.sort(rng.standard_normal(5000) * 10.0 ** rng.integers(-20, 20, 5000))
    for bits in (0, 4, 23):
        assert (float_order_keys(torch.from_numpy(dense), bits).diff() >= 0).all()
    signed_zero = float_order_keys(torch.tensor([-0.0, 0.0]))
    assert signed_zero[0] == signed_zero[1]


def test_any_real_score_is_ranked_and_ignore_is_honoured():
    """Negative, huge, tiny and infinite scores need no range: nothing is clamped (the exact result, bit for bit)."""
    rng = np.random.default_rng(3)
    choices = np.array([-np.inf, -1e30, -2.0, -0.0, 0.0, 1e-38, 2.0**-20, 0.75, 3.0, 2.0**90, np.inf])
    score = rng.choice(choices, size=(12, 10))
    target = rng.random((12, 10)) < 0.3
    ignore = np.zeros((12, 10), bool)
    ignore[1] = True
    score[1, 0] = np.nan  # ignored: allowed
    curve = StreamingBinaryCurve()
    assert curve.update(score, target, ignore) == 110
    assert curve.compute() == binary_curve_metrics(score, target, ignore)


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


def test_chunked_and_batched_merges_and_bounded_table(monkeypatch):
    images = _images(4, shapes=[(33, 31)] * 3)
    whole = StreamingBinaryCurve(max_bins=1024)
    for score, error in images:
        whole.update(score, error)
    monkeypatch.setattr(streaming, "CHUNK_PIXELS", 100)
    monkeypatch.setattr(streaming, "MAX_PENDING_CHUNKS", 3)  # merges after every third chunk of 100 pixels
    chunked = StreamingBinaryCurve(max_bins=1024)
    for score, error in images:
        chunked.update(score, error)
        assert chunked.keys.numel() <= 1024  # the table never holds more than max_bins rows
    assert all(torch.equal(a, b) for a, b in zip(whole.counts(), chunked.counts()))
    assert whole.precision_bits == chunked.precision_bits < 23
    assert int(chunked.table.sum()) == 3 * 33 * 31 and chunked.keys.numel() <= 1024


def test_empty_and_reset():
    stream = StreamingPixelFailureMetrics("pooled", max_bins=512)
    assert all(math.isnan(stream.compute()[key]) for key in FAILURE)
    stream.update(np.array([0.9, 0.1]), np.array([1, 0]))
    assert stream.compute()["AUROC"] == 100.0 and stream.compute()["num_images_used"] == 1
    stream.reset()
    assert math.isnan(stream.compute()["AUROC"]) and stream.compute()["num_images_used"] == 0
    assert stream.curve.device is None  # inferred from the first scores again after a reset


def test_bad_arguments():
    for bad in (511, 1e6, True, "1024"):
        with pytest.raises(SynthCPInputError, match="max_bins must be an integer >= 512"):
            StreamingBinaryCurve(bad)
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
        cpu = StreamingPixelFailureMetrics(reduction, max_bins=1024, device="cpu")
        gpu = StreamingPixelFailureMetrics(reduction, max_bins=1024, device="cuda")
        for score, error in zip(scores, errors):
            cpu.update(score, error)
            gpu.update(torch.from_numpy(score).cuda(), torch.from_numpy(error).cuda())
        cpu_result, gpu_result = cpu.compute(), gpu.compute()
        if reduction == "pooled":
            assert all(torch.equal(a, b) for a, b in zip(cpu.curve.counts(), gpu.curve.counts()))
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
    native, swapped = StreamingPixelFailureMetrics(), StreamingPixelFailureMetrics()
    native.update_batch(score, target)
    swapped.update_batch(score.astype(">f4"), target)
    assert native.compute() == swapped.compute()
