"""Pieces of the pancreas study's scoring: the shared not-predicted rule, the VAE crop, the segmenter recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from synthcp3d.engines.segmentation import SegmentationLoss
from synthcp3d.errors import SynthCPInputError
from synthcp3d.transforms import segmenter_train_augmentation
from synthcp3d.workflows.protocol import SegmenterRecipe
from synthcp3d.workflows.pancreas_model import PancreasStudy
from synthcp3d.workflows.pancreas_scoring import not_predicted_is_zero, vae_input


def test_not_predicted_is_zero_only_for_absent_classes():
    pred = np.zeros((4, 4, 4), dtype=np.uint8)
    pred[0, 0, 0] = 1
    q = not_predicted_is_zero(np.array([0.9, 0.6, 0.4]), pred)
    assert q.tolist() == [0.9, 0.6, 0.0]  # tumour (2) absent -> 0; background untouched
    pred[1, 1, 1] = 2
    assert not_predicted_is_zero(np.array([0.9, 0.6, 0.4]), pred).tolist() == [0.9, 0.6, 0.4]
    assert not_predicted_is_zero(np.array([1.0, 0.5, 0.5]), np.zeros((2, 2, 2))).tolist() == [1.0, 0.0, 0.0]


def test_vae_crop_keeps_the_aspect_ratio(tmp_path):
    study = PancreasStudy(dataset_dir=str(tmp_path), output_dir=str(tmp_path), spacing=(1.0, 1.0, 2.0),
                          vae_shape=(32, 32, 32))
    mask = np.zeros((80, 80, 40), dtype=np.int64)
    mask[10:70, 30:45, 15:25] = 1  # 60 x 15 x 20 mm (10 slices of 2 mm)
    onehot = vae_input(study, mask, margin=0)
    fg = onehot[0, 1].cpu().numpy() > 0
    extent = [np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != ax))).size for ax in range(3)]
    # a cube of 60 mm resized to 32^3: 60, 15 and 20 mm -> 32, 8 and ~10.7 voxels (a plain resize gives 32 each)
    assert extent[0] == pytest.approx(32, abs=1)
    assert extent[1] == pytest.approx(8, abs=1)
    assert extent[2] == pytest.approx(32 * 20 / 60, abs=1.5)


def test_segmentation_loss_options_are_monai_dicece():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8, 8))
    ours = SegmentationLoss(include_background=False, batch=True, class_weights=[1.0, 1.0, 3.0])(logits, label)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                     weight=torch.tensor([1.0, 1.0, 3.0]))(logits, label)
    assert torch.allclose(ours, ref)
    plain = SegmentationLoss()(logits, label)
    assert not torch.allclose(ours, plain)


def test_recipe_rejects_unknown_decay():
    with pytest.raises(SynthCPInputError, match="lr_decay"):
        SegmenterRecipe(lr_decay="cosine")


def test_class_ratio_sampling_centres_patches_on_the_tumour():
    from monai.utils import set_determinism

    set_determinism(seed=0)
    label = torch.zeros(1, 64, 64, 32, dtype=torch.int64)
    label[0, 20:40, 20:40, 10:20] = 1
    label[0, 28:32, 28:32, 14:17] = 2  # 48 of 131072 voxels
    image = torch.zeros(1, 64, 64, 32)
    chain = segmenter_train_augmentation((16, 16, 16), num_samples=200, class_ratios=[1, 1, 2])
    patches = chain({"image": image, "label": label})
    with_tumour = np.mean([bool((p["label"] == 2).any()) for p in patches])
    assert 0.4 < with_tumour < 0.75  # half the centres on tumour voxels (+ a few neighbours); uniform gives ~0.03


def test_generic_not_predicted_is_zero_keeps_only_the_named_classes():
    """2D: every class may be absent, road (0) included; NaN (no prediction) of an absent class becomes 0 too."""
    from synthcp3d.targets import not_predicted_is_zero as generic

    pred = np.array([[1, 1], [3, 3]])  # classes 1 and 3 of 5
    q = np.array([0.7, 0.8, np.nan, 0.6, np.nan])
    out = generic(q, pred)
    assert out.tolist()[:2] == [0.0, 0.8] and out[3] == 0.6 and out[2] == 0.0 and out[4] == 0.0
    assert generic(q, pred, keep=(0,))[0] == 0.7
    assert np.isnan(q[2])  # the input is not modified

