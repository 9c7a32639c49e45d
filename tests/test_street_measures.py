"""The 2D studies' measures beside their tables: the segmenter's dataset-level IoU against scikit-learn, and the x̂
ablation's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from synthcp2d.studies.measures import DatasetIoU
from synthcp3d.scoring.synthesis import X_HAT_ABLATIONS, replaced_syntheses
from synthcp3d.scoring.synthesis import ClassMeanPainter


def test_dataset_iou_matches_sklearn_jaccard_over_pooled_pixels():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, size=(6, 9)) for _ in range(3)]
    preds = [np.where(rng.random(lab.shape) < 0.7, lab, rng.integers(0, 4, size=lab.shape)) for lab in labels]
    labels[1][0, :4] = 255  # ignored pixels count for nothing, whatever is predicted there
    iou = DatasetIoU(5, ignore_index=255)  # class 4 is never labelled nor predicted
    for p, lab in zip(preds, labels):
        iou.update(torch.as_tensor(p), torch.as_tensor(lab))
    y = np.concatenate([lab.ravel() for lab in labels])
    p = np.concatenate([q.ravel() for q in preds])
    keep = y != 255
    expected = jaccard_score(y[keep], p[keep], labels=[0, 1, 2, 3], average=None)
    np.testing.assert_allclose(iou.per_class()[:4], expected)
    assert np.isnan(iou.per_class()[4])
    assert iou.mean() == pytest.approx(expected.mean())


def test_replaced_syntheses_are_the_painter_image_and_a_blank():
    painter = ClassMeanPainter(2, image_channels=3)
    painter.mean[:] = [[0.1, 0.2, 0.3], [-0.4, -0.5, -0.6]]
    pred = torch.tensor([[[0, 1], [1, 0]]])
    synth = torch.rand(1, 3, 2, 2)
    replaced = replaced_syntheses(painter, pred, synth, seed=0)
    assert list(replaced) == list(X_HAT_ABLATIONS)
    painted, blank = replaced.values()
    assert torch.allclose(painted[0, :, 0, 1], torch.tensor([-0.4, -0.5, -0.6]))  # std 0: no noise
    assert torch.equal(blank, torch.zeros_like(synth))
