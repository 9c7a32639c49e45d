"""DSC alarm I/O shell: grids and affines round-trip, planted errors land in place, batches, reports, bad input.

A stand-in predictor with known outputs runs behind the real path (volume loading, the bundle's preprocessing
transforms, resampling back by the affines, atomic writing); the real bundle predictor has its own test file.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synthcp3d import cli
from synthcp3d.alarm import api
from synthcp3d.alarm.api import DSCAlarm
from synthcp3d.data.geometry import affine_of, resample_to_grid
from synthcp3d.alarm.predictor import Prediction
from synthcp3d.alarm.report import FLAG_RULE, SUMMARY_COLUMNS
from helpers import needs_cuda, write_dicom_series
from synthcp3d.data.volume_io import load_ct_volume, save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.transforms import ct_preprocessing

SHAPE = (36, 32, 20)
BLOCK = (slice(8, 16), slice(18, 26), slice(6, 12))  # the planted bright block, in input voxel indices
BLOCK_HU = 200.0


def phantom() -> np.ndarray:
    """Soft tissue (40 HU) with an air slab (-1000 HU) and a bright block (200 HU) at :data:`BLOCK`."""
    vol = np.full(SHAPE, 40.0, dtype=np.float32)
    vol[:3] = -1000.0
    vol[BLOCK] = BLOCK_HU
    return vol


def affine_for(kind: str) -> np.ndarray:
    spacing = np.diag([0.8, 0.9, 2.0])
    affine = np.eye(4)
    if kind == "ras":
        affine[:3, :3] = spacing
    elif kind == "lps":
        affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ spacing
    elif kind == "oblique":
        affine[:3, :3] = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix() @ spacing
    affine[:3, 3] = [-12.0, 7.5, 30.0]
    return affine


class PlantedPredictor:
    """Stand-in: segments voxels brighter than the HU window's middle as tumour and calls them all errors.

    Its outputs are known functions of the preprocessed image, so after the real preprocessing and the
    resampling back, the written error map must hold the planted block at the block's input voxels.
    """

    labels = {0: "background", 1: "pancreas", 2: "tumour"}
    info = {"model": {"name": "stand-in", "version": "0"}, "bundle": {"name": "test", "version": "0.0.0"}}

    def __init__(
        self, spacing: tuple[float, ...] = (1.5, 1.5, 2.5), tumour_dsc: float = 0.3, fail_on: float | None = None
    ) -> None:
        self.chain = ct_preprocessing(spacing, label_key=None, load=False)
        self.tumour_dsc = tumour_dsc
        self.calls = 0

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.chain({"image": image})["image"]

    def __call__(self, image: torch.Tensor, timer=None) -> Prediction:
        self.calls += 1
        x = image[0].cpu().numpy()
        block = x > 0.5  # 200 HU -> 0.76 in the [-100, 240] window scaled to [-1, 1]; 40 HU -> -0.18
        seg = np.where(block, 2, 0).astype(np.uint8)
        dsc = {
            "synthcp": {"pancreas": 0.8, "tumour": self.tumour_dsc},
            "vae_alarm": {"pancreas": None, "tumour": self.tumour_dsc},
        }
        dsc["ensemble"] = {"pancreas": 0.8, "tumour": self.tumour_dsc}
        return Prediction(seg, block.astype(np.float32), x, -x, affine_of(image), dsc, {"segment": 0.01})


def write_nifti(path: Path, kind: str) -> Path:
    return save_like(phantom(), affine_for(kind), path)


@pytest.fixture
def alarm() -> DSCAlarm:
    return DSCAlarm(PlantedPredictor(), threshold=0.5, progress=False)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------- geometry
@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_resample_round_trip_is_exact_on_the_same_spacing(kind: str) -> None:
    from synthcp3d.data.geometry import as_metatensor

    vol = phantom()
    affine = affine_for(kind)
    # Orientation RAS + Spacing at the input's own spacing: a pure re-indexing, so the way back must be exact.
    chain = ct_preprocessing((0.8, 0.9, 2.0), label_key=None, load=False)
    working = chain({"image": as_metatensor(vol, affine)})["image"]
    back = resample_to_grid(working[0].numpy() > 0.5, affine_of(working), affine, SHAPE, "nearest")
    np.testing.assert_array_equal(back > 0.5, vol > 100)


@needs_cuda
@pytest.mark.parametrize("kind", ["lps", "oblique"])
def test_preprocessing_and_resampling_on_cuda_match_the_cpu(kind: str) -> None:
    """The alarm preprocesses and resamples back on its device: on a GPU the same grids and values as on the CPU."""
    from synthcp3d.data.geometry import as_metatensor

    vol, affine = phantom(), affine_for(kind)
    chain = ct_preprocessing((1.0, 1.0, 1.5), label_key=None, load=False)
    on_cpu = chain({"image": as_metatensor(vol, affine)})["image"]
    on_gpu = chain({"image": as_metatensor(vol, affine).to("cuda")})["image"]
    assert on_gpu.device.type == "cuda" and on_gpu.shape == on_cpu.shape
    np.testing.assert_allclose(affine_of(on_gpu), affine_of(on_cpu), atol=1e-6)
    np.testing.assert_allclose(on_gpu.cpu().numpy(), on_cpu.numpy(), atol=1e-4)
    labels = (on_cpu[0].numpy() > 0.5).astype(np.uint8)
    args = (affine_of(on_cpu), affine, SHAPE)
    np.testing.assert_allclose(
        resample_to_grid(labels, *args, "bilinear", device="cuda"), resample_to_grid(labels, *args, "bilinear"),
        atol=1e-5,
    )
    nearest_gpu = resample_to_grid(labels, *args, "nearest", device="cuda")
    nearest_cpu = resample_to_grid(labels, *args, "nearest")
    assert np.mean(nearest_gpu != nearest_cpu) < 1e-3  # only voxels exactly between two source voxels may differ


# ---------------------------------------------------------------- one case, all orientations
@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_outputs_on_input_grid_with_planted_error(tmp_path: Path, alarm: DSCAlarm, kind: str) -> None:
    src = write_nifti(tmp_path / f"case_{kind}.nii.gz", kind)
    reports = list(alarm.run_batch([src], out_dir=tmp_path / "out"))
    assert len(reports) == 1 and reports[0].ok, reports[0].error
    case_dir = tmp_path / "out" / f"case_{kind}"
    seg_img = nib.load(case_dir / "segmentation.nii.gz")
    err_img = nib.load(case_dir / "error_probability.nii.gz")
    for img in (seg_img, err_img):
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, affine_for(kind), atol=1e-4)
    truth = phantom() > 100
    err = np.asarray(err_img.dataobj)
    seg = np.asarray(seg_img.dataobj)
    assert err.dtype == np.float32 and seg.dtype == np.uint8
    assert dice(err > 0.5, truth) > 0.85
    assert dice(seg == 2, truth) > 0.85
    # The error sits at the block and nowhere else: beyond the trilinear rim (one 1.5-2.5 mm working voxel, up to
    # three 0.8 mm input voxels) it is exactly zero.
    from scipy.ndimage import binary_dilation

    assert err[~binary_dilation(truth, iterations=4)].max() == 0.0
    assert err[~binary_dilation(truth, iterations=1)].max() < 0.5
    centre = np.argwhere(err > 0.5).mean(axis=0)
    np.testing.assert_allclose(centre, np.argwhere(truth).mean(axis=0), atol=1.0)


def test_dicom_series_input(tmp_path: Path, alarm: DSCAlarm) -> None:
    series = write_dicom_series(phantom(), affine_for("oblique"), tmp_path / "series_a")
    loaded = load_ct_volume(series)
    report = alarm(series)
    assert report.ok and report.case == "series_a"
    np.testing.assert_allclose(report.affine, loaded.affine)
    assert report.segmentation.shape == loaded.array.shape
    assert dice(report.error_probability > 0.5, loaded.array > 100) > 0.85
    outputs = api.write_case_outputs(report, tmp_path / "out")
    np.testing.assert_allclose(nib.load(outputs["error_probability"]).affine, loaded.affine, atol=1e-4)


def test_array_input_and_report_json(alarm: DSCAlarm) -> None:
    report = alarm((phantom(), affine_for("ras")))
    assert report.ok and report.flagged is True and report.threshold == 0.5
    data = json.loads(report.to_json())
    assert data["predicted_dsc"]["ensemble"]["tumour"] == pytest.approx(0.3)
    assert data["predicted_dsc"]["vae_alarm"]["pancreas"] is None
    assert data["flag_rule"] == FLAG_RULE and data["model"]["name"] == "stand-in"
    assert {"load", "preprocess", "segment", "postprocess", "total"} <= set(data["seconds"])
    assert data["input"]["shape"] == list(SHAPE)


def test_flag_rule_threshold_and_overview(tmp_path: Path) -> None:
    src = write_nifti(tmp_path / "a.nii.gz", "ras")
    good = DSCAlarm(PlantedPredictor(tumour_dsc=0.7), threshold=0.5, progress=False)
    bad = DSCAlarm(PlantedPredictor(tumour_dsc=0.3), threshold=0.5, progress=False)
    (r_good,) = good.run_batch([src], out_dir=tmp_path / "good")
    (r_bad,) = bad.run_batch([src], out_dir=tmp_path / "bad")
    assert r_good.flagged is False and not (tmp_path / "good" / "a" / "overview.png").exists()
    assert r_bad.flagged is True
    png = tmp_path / "bad" / "a" / "overview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nan = DSCAlarm(PlantedPredictor(tumour_dsc=float("nan")), threshold=0.5, progress=False)
    report = nan((phantom(), affine_for("ras")))
    assert report.flagged is True and json.loads(report.to_json())["predicted_dsc"]["ensemble"]["tumour"] is None


def test_non_ct_range_warns_and_still_runs(tmp_path: Path, alarm: DSCAlarm) -> None:
    src = save_like(phantom() / 1000.0 + 5.0, affine_for("ras"), tmp_path / "mri_like.nii.gz")
    (report,) = alarm.run_batch([src], out_dir=tmp_path / "out")
    assert report.ok and any("Hounsfield" in w for w in report.warnings)
    assert (tmp_path / "out" / "mri_like" / "segmentation.nii.gz").exists()


# ---------------------------------------------------------------- bad inputs, batches
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """One file per kind of bad input the issue lists (the bundle and output-folder ones are tested apart)."""
    bad: dict[str, Path] = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    four_d = np.zeros((8, 8, 6, 3), np.float32)
    bad["4D"] = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(four_d, np.eye(4)), bad["4D"])
    bad["2D"] = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), bad["2D"])
    good = write_nifti(tmp_path / "whole.nii.gz", "ras").read_bytes()
    bad["truncated"] = tmp_path / "truncated.nii.gz"
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["corrupt"] = tmp_path / "corrupt.nii.gz"
    bad["corrupt"].write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    bad["empty"] = tmp_path / "empty.nii.gz"
    bad["empty"].write_bytes(b"")
    nan = phantom()
    nan[3, 3, 3] = np.nan
    nan[4, 4, 4] = np.inf
    bad["NaN"] = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(nan, np.eye(4)), bad["NaN"])
    import pydicom.data

    single = tmp_path / "single_slice"
    single.mkdir()
    (single / "CT_small.dcm").write_bytes(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes())
    bad["single DICOM slice"] = single
    two = tmp_path / "two_series"
    write_dicom_series(phantom(), affine_for("ras"), tmp_path / "s1", series_description="first")
    write_dicom_series(phantom()[:, :, :10], affine_for("lps"), tmp_path / "s2", series_description="second")
    two.mkdir()
    for folder in (tmp_path / "s1", tmp_path / "s2"):
        for f in folder.iterdir():
            os.replace(f, two / f"{folder.name}_{f.name}")
    bad["two DICOM series"] = two
    return bad


EXPECTED = {
    "4D": "4D volume",
    "2D": "2D image",
    "truncated": "truncated",
    "corrupt": "NIfTI",
    "empty": "empty",
    "NaN": "NaN",
    "single DICOM slice": "single DICOM slice",
    "two DICOM series": "2 DICOM series",
}


def test_bad_inputs_fail_alone_and_clearly(tmp_path: Path, alarm: DSCAlarm) -> None:
    bad = bad_inputs(tmp_path / "in")
    good = write_nifti(tmp_path / "in" / "good.nii.gz", "lps")
    paths = [bad[k] for k in EXPECTED] + [good]
    out = tmp_path / "out"
    reports = list(alarm.run_batch(paths, out_dir=out))
    assert [r.ok for r in reports] == [False] * len(EXPECTED) + [True]
    for (kind, needle), report in zip(EXPECTED.items(), reports):
        assert needle.lower() in report.error.lower(), (kind, report.error)
        assert "\n" not in report.error
        assert not (out / report.case).exists(), f"{kind}: outputs written for a failed case"
    assert alarm.predictor.calls == 1
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # no temporary or partial folder left


def test_single_bad_file_cli_one_line_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: PlantedPredictor())
    bad = bad_inputs(tmp_path / "in")
    for kind, path in bad.items():
        out = tmp_path / f"out_{kind.replace(' ', '_')}"
        status = cli.main(["alarm", str(path), "--bundle", str(tmp_path), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert status == 1, kind
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and EXPECTED[kind].lower() in lines[0].lower(), (kind, err)
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]


def test_cli_batch_summary_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: PlantedPredictor(tumour_dsc=0.3))
    folder = tmp_path / "cases"
    write_nifti(folder / "c1.nii.gz", "ras")
    write_nifti(folder / "c2.nii.gz", "oblique")
    (tmp_path / "list.csv").write_text("image\ncases/c1.nii.gz\nmissing.nii.gz\n")
    out = tmp_path / "out"
    args = [
        "alarm",
        str(folder),
        str(tmp_path / "list.csv"),
        "--bundle",
        str(tmp_path),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(args) == 1  # missing.nii.gz failed
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].split(",") == SUMMARY_COLUMNS
    assert len(rows) == 5 and ",failed," in rows[4] and "no such file" in rows[4]
    assert [r.split(",")[0] for r in rows[1:]] == ["c1", "c2", "c1_2", "missing"]
    report = json.loads((out / "c2" / "report.json").read_text())
    assert report["flagged"] is True and report["threshold"] == 0.5 and report["threshold_source"] == "default"
    capsys.readouterr()
    assert cli.main(["alarm", str(folder), "--bundle", str(tmp_path), "--out", str(out), "--no-progress"]) == 0
    assert (
        cli.main(
            ["alarm", str(folder), "--bundle", str(tmp_path), "--out", str(out), "--no-progress", "--fail-on-flag"]
        )
        == 3
    )
    status = cli.main(
        [
            "alarm",
            str(folder),
            "--bundle",
            str(tmp_path),
            "--out",
            str(out),
            "--no-progress",
            "--fail-on-flag",
            "--threshold",
            "0.2",
        ]
    )
    assert status == 0
    assert json.loads((out / "c1" / "report.json").read_text())["threshold_source"] == "user"


def test_refused_run_leaves_no_output_folder(tmp_path: Path, capsys) -> None:
    src = write_nifti(tmp_path / "c.nii.gz", "ras")
    out = tmp_path / "new" / "out"
    status = cli.main(["alarm", str(src), "--bundle", str(tmp_path / "no_bundle"), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()  # the folders the run created went with it
    kept = tmp_path / "kept"
    kept.mkdir()
    assert cli.main(["alarm", str(src), "--bundle", str(tmp_path / "no_bundle"), "--out", str(kept)]) == 2
    assert kept.is_dir()  # a folder the user had is left alone


def test_output_folder_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: PlantedPredictor())
    src = write_nifti(tmp_path / "c.nii.gz", "ras")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status = cli.main(["alarm", str(src), "--bundle", str(tmp_path), "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: output folder") and err.count("\n") == 1
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert cli.main(["alarm", str(src), "--bundle", str(tmp_path), "--out", str(locked)]) == 2
        assert "not writable" in capsys.readouterr().err
    with pytest.raises(SynthCPInputError, match="not writable"):
        api.check_writable(blocker / "sub")


def test_crash_while_writing_leaves_nothing(tmp_path: Path, alarm: DSCAlarm, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthcp3d.alarm.overview as overview

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(overview, "save_overview", boom)
    src = write_nifti(tmp_path / "c.nii.gz", "ras")
    (report,) = alarm.run_batch([src], out_dir=tmp_path / "out")
    assert not report.ok and "disk full" in report.error
    assert list((tmp_path / "out").iterdir()) == []


def test_cuda_refused_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SynthCPInputError, match="CUDA is not available"):
        api.resolve_device("cuda")


def test_stage_timer_records_time_and_peak_memory() -> None:
    from synthcp3d.alarm.timing import StageTimer

    timer = StageTimer("cpu", memory=True)
    with timer("big"):
        block = np.ones(40_000_000 // 8)  # ~40 MB resident
        block.sum()
    with timer("big"):
        pass
    assert timer.seconds["big"] > 0.0
    if Path("/proc/self/clear_refs").exists() and timer.peak_rss_mb:
        assert timer.peak_rss_mb["big"] > 30.0
    del block


def test_bad_arrays_refused_like_files(alarm: DSCAlarm) -> None:
    nan = phantom()
    nan[0, 0, 0] = np.nan
    with pytest.raises(SynthCPInputError, match="NaN"):
        alarm((nan, affine_for("ras")))
    with pytest.raises(SynthCPInputError, match="4D"):
        alarm((np.zeros((8, 8, 8, 2), np.float32), np.eye(4)))


class TwoOpinions(PlantedPredictor):
    """The paper's ensemble says "bad" (0.3), SynthCP + pairwise Dice says "good" (0.9)."""

    def __call__(self, image: torch.Tensor, timer=None) -> Prediction:
        prediction = super().__call__(image, timer)
        prediction.dsc["synthcp_pairwise"] = {"pancreas": 0.9, "tumour": 0.9}
        return prediction


def test_the_flag_reads_the_chosen_method() -> None:
    source = (phantom(), affine_for("ras"))
    default = DSCAlarm(TwoOpinions(), threshold=0.5, progress=False)(source)
    chosen = DSCAlarm(TwoOpinions(), threshold=0.5, progress=False, flag_method="synthcp_pairwise")(source)
    assert default.flagged and default.flag_method == "ensemble" and default.to_dict()["flag_rule"] == FLAG_RULE
    assert not chosen.flagged and chosen.to_dict()["flag_method"] == "synthcp_pairwise"
    assert "pairwise Dice" in chosen.to_dict()["flag_rule"]
    with pytest.raises(SynthCPInputError, match="unknown flag method"):
        DSCAlarm(TwoOpinions(), flag_method="vote")
