"""The DSC alarm judging a given segmentation: label mapping, grid checks, the mask reaching the predictor, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthcp3d import cli
from synthcp3d.alarm import api
from synthcp3d.alarm.api import DSCAlarm
from synthcp3d.data.geometry import affine_of
from synthcp3d.alarm.masks import check_same_space, load_mask, mask_to_classes, parse_label_map
from synthcp3d.alarm.predictor import Prediction
from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.transforms import ct_preprocessing

SHAPE = (32, 28, 16)
ORGAN = (slice(6, 22), slice(8, 20), slice(4, 12))
TUMOUR = (slice(10, 16), slice(10, 16), slice(6, 10))


def lps_affine(spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [20.0, -5.0, 40.0]
    return affine


def ct() -> np.ndarray:
    vol = np.full(SHAPE, 40.0, dtype=np.float32)
    vol[ORGAN] = 90.0
    vol[TUMOUR] = 50.0
    return vol


def nnunet_mask(pancreas: int = 7, tumour: int = 9) -> np.ndarray:
    """Another tool's label values: the organ, the tumour inside it, and an unrelated structure (value 3)."""
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[ORGAN] = pancreas
    mask[TUMOUR] = tumour
    mask[26:30, 2:5, 2:4] = 3
    return mask


class RecordingPredictor:
    """Stand-in that records the segmentation it is given and predicts DSC = tumour volume share (known output)."""

    labels = {0: "background", 1: "pancreas", 2: "tumour"}
    info = {"model": {"name": "stand-in segmenter"}, "bundle": {"name": "test"}}

    def __init__(self) -> None:
        self.chain = ct_preprocessing((2.0, 2.0, 2.0), label_key=None, load=False)
        self.given: list[np.ndarray | None] = []

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.chain({"image": image})["image"]

    def __call__(self, image: torch.Tensor, timer=None, segmentation: np.ndarray | None = None) -> Prediction:
        self.given.append(segmentation)
        x = image[0].cpu().numpy()
        seg = np.zeros(x.shape, np.uint8) if segmentation is None else segmentation
        assert seg.shape == x.shape
        share = float((seg == 2).sum()) / max(float((seg > 0).sum()), 1.0)
        dsc = {m: {"pancreas": 0.9, "tumour": share} for m in ("synthcp", "vae_alarm", "ensemble")}
        return Prediction(seg, np.zeros(x.shape, np.float32), x, None, affine_of(image), dsc)


# ---------------------------------------------------------------- pieces
def test_parse_label_map() -> None:
    assert parse_label_map(None) == {"pancreas": 1, "tumour": 2}
    assert parse_label_map("pancreas=7, tumor=9") == {"pancreas": 7, "tumour": 9}
    assert parse_label_map({"tumour": 2}) == {"tumour": 2}
    for bad, why in [("liver=3", "unknown class"), ("pancreas=0", "positive integer"), ("pancreas=1.5", "positive"),
                     ("pancreas=1,tumour=1", "two classes"), ("pancreas", "NAME=VALUE"), (",", "names no class")]:
        with pytest.raises(SynthCPInputError, match=why):
            parse_label_map(bad)


def test_load_mask_refuses_what_is_not_a_label_volume(tmp_path: Path) -> None:
    path = save_like(nnunet_mask(), lps_affine(), tmp_path / "m.nii.gz")
    values, affine, text = load_mask(path)
    assert values.dtype == np.int64 and np.array_equal(values, nnunet_mask()) and text == str(path)
    np.testing.assert_allclose(affine, lps_affine(), atol=1e-5)
    probs = save_like(np.full(SHAPE, 0.4, np.float32), lps_affine(), tmp_path / "p.nii.gz")
    for source, why in [(probs, "non-integer"), (tmp_path / "none.nii.gz", "does not exist"),
                        ((np.zeros((4, 4)), np.eye(4)), "3D label volume")]:
        with pytest.raises(SynthCPInputError, match=why):
            load_mask(source)
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(SynthCPInputError, match="not a readable NIfTI"):
        load_mask(tmp_path / "bad.nii.gz")


def test_same_space_accepts_another_voxel_size_and_refuses_another_view() -> None:
    image = lps_affine()
    check_same_space(image, SHAPE, image, SHAPE)
    half = lps_affine((2.0, 2.0, 4.0))
    half[:3, 3] += np.array([-0.5, -0.5, 1.0])  # same outer edges at half the resolution
    check_same_space(half, (16, 14, 8), image, SHAPE)
    shifted = image.copy()
    shifted[:3, 3] += [0.0, 0.0, 10.0]
    with pytest.raises(SynthCPInputError, match="field of view"):
        check_same_space(shifted, SHAPE, image, SHAPE)
    with pytest.raises(SynthCPInputError, match="field of view"):
        check_same_space(image, (32, 28, 12), image, SHAPE)  # a crop
    flipped = np.diag([1.0, -1.0, 2.0, 1.0])
    with pytest.raises(SynthCPInputError, match="orientation"):
        check_same_space(flipped, SHAPE, image, SHAPE)


def test_mask_to_classes_maps_values_and_names_the_unclaimed() -> None:
    classes, unclaimed = mask_to_classes(nnunet_mask(), {"pancreas": 7, "tumour": 9}, {"pancreas": 1, "tumour": 2})
    expected = np.zeros(SHAPE, np.uint8)
    expected[ORGAN] = 1
    expected[TUMOUR] = 2
    assert np.array_equal(classes, expected) and unclaimed == [3]


# ---------------------------------------------------------------- the alarm judges the mask
def test_alarm_judges_the_given_mask_not_its_own_segmentation(tmp_path: Path) -> None:
    image = save_like(ct(), lps_affine(), tmp_path / "ct.nii.gz")
    mask = save_like(nnunet_mask(), lps_affine(), tmp_path / "seg.nii.gz")
    predictor = RecordingPredictor()
    alarm = DSCAlarm(predictor, threshold=0.5, progress=False)
    report = alarm(image, mask=mask, labels="pancreas=7,tumour=9")
    given = predictor.given[-1]
    assert given is not None and given.dtype == np.uint8
    # on the 2 mm working grid the tumour keeps its volume: 6x6x4 voxels of 2 mm^3 -> about 36 voxels of 8 mm^3
    assert abs(int((given == 2).sum()) - 36) <= 12 and set(np.unique(given)) == {0, 1, 2}
    expected = np.zeros(SHAPE, np.uint8)
    expected[ORGAN] = 1
    expected[TUMOUR] = 2
    assert np.array_equal(report.segmentation, expected)  # the judged mask, on the input grid, not a round trip
    assert report.judged == {"segmentation": "given mask", "mask": str(mask), "labels": {"pancreas": 7, "tumour": 9}}
    assert report.to_dict()["judged"]["mask"] == str(mask)
    assert any("[3]" in w for w in report.warnings)
    assert alarm(image).judged["segmentation"] == "bundle segmenter" and predictor.given[-1] is None


def test_a_mask_on_a_coarser_grid_of_the_same_view_is_resampled(tmp_path: Path) -> None:
    image = save_like(ct(), lps_affine(), tmp_path / "ct.nii.gz")
    coarse_affine = lps_affine((2.0, 2.0, 4.0))
    coarse_affine[:3, 3] += np.array([-0.5, -0.5, 1.0])
    coarse = nnunet_mask(1, 2)[::2, ::2, ::2]
    mask = save_like(coarse, coarse_affine, tmp_path / "coarse.nii.gz")
    report = DSCAlarm(RecordingPredictor(), progress=False)(image, mask=mask)
    truth = np.zeros(SHAPE, bool)
    truth[TUMOUR] = True
    seg = report.segmentation == 2
    assert 2 * (seg & truth).sum() / (seg.sum() + truth.sum()) > 0.8


def test_a_mask_of_another_view_is_refused(tmp_path: Path) -> None:
    image = save_like(ct(), lps_affine(), tmp_path / "ct.nii.gz")
    other = lps_affine()
    other[:3, 3] += [0.0, 0.0, 30.0]
    mask = save_like(nnunet_mask(1, 2), other, tmp_path / "other.nii.gz")
    alarm = DSCAlarm(RecordingPredictor(), progress=False)
    with pytest.raises(SynthCPInputError, match="field of view"):
        alarm(image, mask=mask)


def test_cli_mask_and_csv_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    predictor = RecordingPredictor()
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: predictor)
    image = save_like(ct(), lps_affine(), tmp_path / "ct.nii.gz")
    mask = save_like(nnunet_mask(), lps_affine(), tmp_path / "seg.nii.gz")
    out = tmp_path / "out"
    base = ["alarm", "--bundle", str(tmp_path), "--no-progress"]
    assert cli.main([*base, str(image), "--mask", str(mask), "--labels", "pancreas=7,tumour=9", "--out", str(out)]) == 0
    assert predictor.given[-1] is not None
    seg = np.asarray(nib.load(out / "ct" / "segmentation.nii.gz").dataobj)
    assert int((seg == 2).sum()) == 6 * 6 * 4
    with open(out / "summary.csv") as handle:
        assert next(csv.DictReader(handle))["judged"] == str(mask)
    # a CSV of image,mask pairs; one row without a mask is segmented by the bundle
    listing = tmp_path / "pairs.csv"
    listing.write_text(f"image,mask,case\n{image},{mask},a\n{image},,b\n")
    assert cli.main([*base, str(listing), "--labels", "pancreas=7,tumour=9", "--out", str(tmp_path / "o2")]) == 0
    assert predictor.given[-2] is not None and predictor.given[-1] is None
    # refused before anything runs: --mask with two inputs, a bad --labels
    assert cli.main([*base, str(image), str(image), "--mask", str(mask), "--out", str(out)]) == 2
    assert cli.main([*base, str(image), "--mask", str(mask), "--labels", "liver=4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exactly one input" in err and "unknown class 'liver'" in err
