from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from synthcp3d.transforms import ct_preprocessing, segmenter_train_augmentation


def _write(tmp_path, affine):
    image = np.full((20, 16, 8), -1000, dtype=np.int16)
    image[5:15, 4:12, 2:6] = 40
    label = np.zeros((20, 16, 8), dtype=np.uint8)
    label[8:12, 6:10, 3:5] = 1
    label[9, 7, 4] = 2
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    return {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}


def test_preprocessing_reorients_resamples_and_windows(tmp_path):
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS-ish file, 1 x 1 x 2 mm voxels
    out = ct_preprocessing(spacing=(2.0, 2.0, 2.0))(_write(tmp_path, lps))
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 10, 8, 8) and lab.shape == img.shape
    assert img.dtype == torch.float32 and lab.dtype == torch.int64
    assert float(img.min()) == -1.0 and float(img.max()) <= 1.0
    assert set(torch.unique(lab).tolist()) <= {0, 1, 2} and int((lab > 0).sum()) > 0
    assert np.allclose(np.diag(img.affine.numpy())[:3], [2.0, 2.0, 2.0])  # RAS, positive spacing


def test_train_augmentation_gives_patches_padding_small_volumes():
    data = {"image": torch.randn(1, 20, 16, 8), "label": torch.zeros(1, 20, 16, 8, dtype=torch.long)}
    data["label"][0, 10:12, 8:10, 2:4] = 1
    patches = segmenter_train_augmentation((16, 16, 16), num_samples=3)(data)
    assert len(patches) == 3 and all(p["image"].shape == (1, 16, 16, 16) for p in patches)
