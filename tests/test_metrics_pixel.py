from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics import anomaly_metrics, binary_curve_metrics, pixel_failure_metrics
from synthcp3d.metrics.curves import threshold_counts, threshold_counts_torch

TOL = 1e-6


def _sk(score: np.ndarray, target: np.ndarray) -> dict:
    """scikit-learn reference (×100); FPR95 = smallest FPR over roc_curve points with TPR >= 0.95."""
    fpr, tpr, _ = roc_curve(target, score, drop_intermediate=False)
    return {
        "AUPR": 100 * average_precision_score(target, score),
        "AUROC": 100 * roc_auc_score(target, score),
        "FPR95": 100 * fpr[tpr >= 0.95].min(),
    }


def _sk_failure(score: np.ndarray, error: np.ndarray) -> dict:
    ref = _sk(score, error)
    return {
        "AUPR_Error": ref["AUPR"],
        "AUPR_Success": 100 * average_precision_score(~error, -score),
        "AUROC": ref["AUROC"],
        "FPR95": ref["FPR95"],
    }


def _assert_close(result: dict, reference: dict, tol: float = TOL) -> None:
    for key, value in reference.items():
        if math.isnan(value):
            assert math.isnan(result[key]), key
        else:
            assert result[key] == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("levels", [None, 2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_curve_matches_sklearn(levels, seed):
    rng = np.random.default_rng(seed)
    target = rng.random(500) < rng.uniform(0.05, 0.6)
    score = rng.random(500) + 0.4 * target
    if levels is not None:  # tie-heavy: only a few distinct score values
        score = np.round(score * levels) / levels
    _assert_close(binary_curve_metrics(score, target), _sk(score, target))
    _assert_close(binary_curve_metrics(score.astype(np.float32), target.astype(np.uint8)), _sk(score, target), 1e-4)


def test_fpr95_takes_the_first_threshold_reaching_95_percent():
    # 20 positives: TPR = 19/20 = 0.95 exactly after the 19th, one negative ranked above them.
    score = np.concatenate([[1.0], np.linspace(0.9, 0.5, 20), [0.45, 0.4, 0.3]])
    target = np.array([0] + [1] * 20 + [0, 0, 0], dtype=bool)
    score[20] = 0.2  # the 20th positive falls below every negative
    result = binary_curve_metrics(score, target)
    assert result["FPR95"] == pytest.approx(100 * 1 / 4)
    _assert_close(result, _sk(score, target))


def test_threshold_counts_numpy_and_torch_agree():
    rng = np.random.default_rng(3)
    score = np.round(rng.random(1000) * 7) / 7
    target = rng.random(1000) < 0.3
    positives, negatives = threshold_counts(score, target)
    assert positives.sum() == target.sum() and negatives.sum() == (~target).sum() and len(positives) == 8
    tp, tn = threshold_counts_torch(torch.from_numpy(score), torch.from_numpy(target))
    assert np.array_equal(tp.numpy(), positives) and np.array_equal(tn.numpy(), negatives)


def test_pixel_failure_pooled_matches_sklearn_with_ignore():
    rng = np.random.default_rng(4)
    error = rng.random((3, 8, 9)) < 0.3
    score = np.round(rng.random((3, 8, 9)) + 0.3 * error, 1)  # ties
    ignore = rng.random((3, 8, 9)) < 0.2
    score[ignore] = np.nan  # ignored pixels may hold anything
    error_map = np.where(ignore, 255, error.astype(np.uint8))
    result = pixel_failure_metrics(score, error_map, ignore=ignore)
    assert result["reduction"] == "pooled" and result["num_images_used"] == 3
    _assert_close(result, _sk_failure(score[~ignore], error[~ignore]))


def test_per_image_matches_sklearn_mean_and_shapes_may_differ():
    rng = np.random.default_rng(5)
    shapes = [(6, 7), (5, 4, 3), (9,)]
    errors = [rng.random(s) < 0.4 for s in shapes]
    scores = [rng.random(s) + 0.5 * e for s, e in zip(shapes, errors)]
    per_image = pixel_failure_metrics(scores, errors, reduction="per_image")
    references = [_sk_failure(s.ravel(), e.ravel()) for s, e in zip(scores, errors)]
    _assert_close(per_image, {key: np.mean([ref[key] for ref in references]) for key in references[0]})
    assert per_image["num_images_used"] == 3
    pooled = pixel_failure_metrics(scores, errors)
    _assert_close(
        pooled, _sk_failure(np.concatenate([s.ravel() for s in scores]), np.concatenate([e.ravel() for e in errors]))
    )


def test_per_image_and_pooled_differ_where_they_must():
    # Each image ranks perfectly, but image 0's correct pixels outscore image 1's errors.
    scores = np.array([[0.9, 0.8], [0.2, 0.1]])
    errors = np.array([[1, 0], [1, 0]])
    per_image = pixel_failure_metrics(scores, errors, reduction="per_image")
    pooled = pixel_failure_metrics(scores, errors, reduction="pooled")
    assert per_image["AUROC"] == 100.0 and per_image["FPR95"] == 0.0
    assert pooled["AUROC"] == pytest.approx(75.0) and pooled["FPR95"] == pytest.approx(50.0)
    _assert_close(pooled, _sk_failure(scores.ravel(), errors.ravel().astype(bool)))


def test_degenerate_cases_have_one_answer():
    score = np.linspace(0, 1, 12).reshape(2, 6)
    for error in (np.zeros((2, 6)), np.ones((2, 6))):  # all correct / all wrong: undefined
        for reduction in ("pooled", "per_image"):
            result = pixel_failure_metrics(score, error, reduction=reduction)
            assert all(math.isnan(result[key]) for key in ("AUPR_Error", "AUPR_Success", "AUROC", "FPR95"))
            assert result["num_images_used"] == (0 if reduction == "per_image" else 2)
    error = np.array([[1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]])
    constant = pixel_failure_metrics(np.full((2, 6), 0.7), error)
    assert constant["AUROC"] == 50.0 and constant["FPR95"] == 100.0
    assert constant["AUPR_Error"] == pytest.approx(100 * 3 / 12) and constant["AUPR_Success"] == pytest.approx(75.0)
    _assert_close(constant, _sk_failure(np.full(12, 0.7), error.ravel().astype(bool)))
    # an image without error is skipped by per_image, not counted as 0 or 100
    one_clean = pixel_failure_metrics([score[0], score[1]], [error[0], np.zeros(6)], reduction="per_image")
    _assert_close(one_clean, _sk_failure(score[0], error[0].astype(bool)))
    assert one_clean["num_images_used"] == 1


def test_anomaly_per_image_skips_images_without_both_classes():
    rng = np.random.default_rng(6)
    labels = [rng.random((10, 10)) < 0.1, np.zeros((10, 10), bool), np.ones((4, 4), bool), rng.random((7, 8)) < 0.2]
    scores = [rng.random(lab.shape) + lab for lab in labels]
    result = anomaly_metrics(scores, labels)
    assert result["reduction"] == "per_image" and result["num_images_used"] == 2
    refs = [_sk(scores[i].ravel(), labels[i].ravel()) for i in (0, 3)]
    _assert_close(result, {key: np.mean([ref[key] for ref in refs]) for key in ("FPR95", "AUROC", "AUPR")})
    assert set(result) == {"FPR95", "AUROC", "AUPR", "reduction", "num_images_used"}


def test_anomaly_pooled_excludes_void_and_accepts_torch():
    rng = np.random.default_rng(7)
    labels = rng.random((2, 6, 6)) < 0.2
    scores = rng.random((2, 6, 6)) + 0.5 * labels
    void = rng.random((2, 6, 6)) < 0.3
    result = anomaly_metrics(
        torch.from_numpy(scores).float(), torch.from_numpy(labels), torch.from_numpy(void), reduction="pooled"
    )
    _assert_close(result, _sk(scores.astype(np.float32)[~void], labels[~void]))
    assert result["num_images_used"] == 2


def test_bad_inputs_raise_clear_errors():
    score, error = np.random.default_rng(8).random((2, 3, 3)), np.zeros((2, 3, 3))
    with pytest.raises(SynthCPInputError, match=r"error_score \(image 0\) has shape"):
        pixel_failure_metrics(score, np.zeros((2, 3, 4)))
    with pytest.raises(SynthCPInputError, match="NaN at 1 non-ignored"):
        bad = score.copy()
        bad[1, 0, 0] = np.nan
        pixel_failure_metrics(bad, error)
    with pytest.raises(SynthCPInputError, match="binary.*ignore="):
        pixel_failure_metrics(score, np.full((2, 3, 3), 255))
    with pytest.raises(SynthCPInputError, match="reduction"):
        anomaly_metrics(score, error, reduction="mean")
    with pytest.raises(SynthCPInputError, match="numbers of images"):
        pixel_failure_metrics([score[0], score[1]], [error[0]])
    with pytest.raises(SynthCPInputError, match=r"\(N, \*spatial\)"):
        pixel_failure_metrics(score[0, 0], error[0, 0])


def test_foreign_byte_order_and_integer_dtypes_are_read():
    """Big-endian arrays (as nibabel returns from many NIfTI files) used to crash in ``torch.from_numpy``."""
    rng = np.random.default_rng(9)
    target = rng.random((2, 5, 5)) < 0.3
    score = rng.random((2, 5, 5)) + 0.4 * target
    reference = pixel_failure_metrics(score, target)
    assert pixel_failure_metrics(score.astype(">f8"), target.astype(">i2")) == reference
    ranks = np.argsort(np.argsort(score.ravel())).reshape(score.shape)
    _assert_close(binary_curve_metrics(ranks.astype(">u4"), target), binary_curve_metrics(score, target))
