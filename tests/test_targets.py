from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from synthcp3d.errors import SynthCPInputError
from synthcp3d.targets import error_map, per_class_quality


def _sklearn_quality(pred: np.ndarray, label: np.ndarray, num_classes: int, metric: str) -> np.ndarray:
    """Independent reference: sklearn per-class IoU / F1 (= Dice), NaN where the class is absent from both."""
    fn = jaccard_score if metric == "iou" else f1_score
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if (pred == c).any() or (label == c).any():
            out[c] = fn(label == c, pred == c, zero_division=0)
    return out


@pytest.mark.parametrize("metric", ["iou", "dice"])
@pytest.mark.parametrize("shape", [(3, 17, 11), (2, 6, 7, 5)])
def test_matches_sklearn_with_absent_classes_and_ignore(metric: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    num_classes = 6
    # classes 0..3 only (4 and 5 absent from both -> NaN); 255 = ignore
    label = rng.integers(0, 4, size=shape)
    pred = rng.integers(0, 4, size=shape)
    label[..., :2] = 255
    pred[..., 0] = 5  # predicted class 5 only on ignored pixels -> still absent
    got = per_class_quality(torch.from_numpy(pred), torch.from_numpy(label), num_classes, metric, ignore_index=255)
    assert got.shape == (shape[0], num_classes)
    for b in range(shape[0]):
        keep = label[b] != 255
        want = _sklearn_quality(pred[b][keep], label[b][keep], num_classes, metric)
        np.testing.assert_allclose(got[b].numpy(), want, atol=1e-6, equal_nan=True)
    assert torch.isnan(got[:, 4:]).all()


def test_edge_cases() -> None:
    label = torch.tensor([[0, 0, 1, 1]])
    # class 1 missed entirely -> 0; class 2 predicted but absent from the label -> 0, not NaN
    pred = torch.tensor([[0, 0, 0, 2]])
    q = per_class_quality(pred, label, 3, "dice")
    assert q[0, 1] == 0 and q[0, 2] == 0
    assert q[0, 0] == pytest.approx(2 * 2 / (2 + 3))
    # perfect prediction -> 1 for present classes, NaN for absent ones
    q = per_class_quality(label, label, 3, "iou")
    assert q[0, 0] == 1 and q[0, 1] == 1 and torch.isnan(q[0, 2])
    # (B, 1, *S) channel layout is accepted
    assert per_class_quality(label[:, None], label[:, None], 3).shape == (1, 3)


def test_error_map_and_ignore() -> None:
    label = torch.tensor([[0, 1, 255, 2]])
    pred = torch.tensor([[0, 2, 1, 2]])
    assert error_map(pred, label, ignore_index=255).tolist() == [[0, 1, 255, 0]]
    assert error_map(pred, label).tolist() == [[0, 1, 1, 0]]


def test_bad_input_is_clear() -> None:
    with pytest.raises(SynthCPInputError, match="shape"):
        per_class_quality(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), 2)
    with pytest.raises(SynthCPInputError, match="non-integer"):
        error_map(torch.full((1, 3), 0.5), torch.zeros(1, 3))
