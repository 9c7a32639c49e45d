"""The DSC alarm on a real pancreas bundle layout (untrained networks: the I/O properties do not depend on training).

One tiny bundle is written once per module with the bundle's own config and network factories; the alarm runs the
real predictor (sliding-window AH-Net, pancreas ROI, SPADE, comparator, mask VAE + regressor, ensemble).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CUDA_MARKS, TINY_PANCREAS, make_untrained_bundle, needs_cuda

from synthcp3d import cli
from synthcp3d.alarm import DSCAlarm
from synthcp3d.alarm.bundle_predictor import BundlePredictor
from helpers import write_dicom_series
from synthcp3d.data.volume_io import load_ct_volume, save_like
from synthcp3d.errors import SynthCPInputError

pytestmark = pytest.mark.slow  # end-to-end: not in `make test-fast`

SHAPE = (40, 36, 16)
BLOCK = (slice(8, 22), slice(16, 30), slice(4, 11))


def phantom() -> np.ndarray:
    vol = np.full(SHAPE, 40.0, dtype=np.float32)
    vol[:3] = -1000.0
    vol[BLOCK] = 200.0
    return vol


def affine_for(kind: str) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    spacing = np.diag([0.9, 0.8, 2.5])
    affine = np.eye(4)
    rot = {"ras": np.eye(3), "lps": np.diag([-1.0, -1.0, 1.0])}.get(kind)
    if rot is None:
        rot = Rotation.from_euler("xyz", [10, 25, -20], degrees=True).as_matrix()
    affine[:3, :3] = rot @ spacing
    affine[:3, 3] = [5.0, -20.0, 40.0]
    return affine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_untrained_bundle(tmp_path_factory.mktemp("bundle") / "trained", TINY_PANCREAS, seed=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for kind in ("lps", "oblique"):  # RAS and the rest of the geometry matrix: test_alarm_api (stand-in predictor)
        save_like(phantom(), affine_for(kind), folder / f"{kind}.nii.gz")
    write_dicom_series(phantom(), affine_for("oblique"), folder / "dicom_series")
    return folder


def test_cli_on_real_bundle_outputs_on_input_grids(bundle: Path, inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    status = cli.main(
        ["alarm", str(inputs), "--bundle", str(bundle), "--out", str(out), "--device", "cpu", "--no-progress"]
    )
    assert status == 0, capsys.readouterr().err
    rows = (out / "summary.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["dicom_series", "lps", "oblique"]
    # the bundle's version, as its metadata in this checkout gives it
    metadata = json.loads((Path(__file__).resolve().parents[1] / "bundles" / "pancreas_ct_synthcp" / "configs"
                           / "metadata.json").read_text())
    for case in ("dicom_series", "lps", "oblique"):
        source = inputs / case if case == "dicom_series" else inputs / f"{case}.nii.gz"
        volume = load_ct_volume(source)
        seg = nib.load(out / case / "segmentation.nii.gz")
        err = nib.load(out / case / "error_probability.nii.gz")
        for img in (seg, err):
            assert img.shape == volume.array.shape
            np.testing.assert_allclose(img.affine, volume.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        e = np.asarray(err.dataobj)
        assert e.min() >= 0.0 and e.max() <= 1.0
        report = json.loads((out / case / "report.json").read_text())
        for method in ("synthcp", "vae_alarm", "ensemble"):
            assert 0.0 <= report["predicted_dsc"][method]["tumour"] <= 1.0
        ens = report["predicted_dsc"]["ensemble"]["tumour"]
        parts = [report["predicted_dsc"][m]["tumour"] for m in ("synthcp", "vae_alarm")]
        assert ens == pytest.approx(np.mean(parts), abs=1e-6)
        assert report["flagged"] == (ens < 0.5)
        assert (out / case / "overview.png").exists() == report["flagged"]
        assert report["bundle"]["version"] == metadata["version"] and report["model"]["settings"] == "tiny-untrained"
        assert {"load", "preprocess", "segment", "synthesize", "compare", "vae", "postprocess", "write"} <= set(
            report["seconds"]
        )


class BrightIsTumour(torch.nn.Module):
    """Segmenter stand-in with known output: voxels above the middle of the HU window are tumour."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tumour = (x > 0.5).float() * 10.0
        return torch.cat([torch.full_like(x, 5.0), torch.zeros_like(x), tumour], dim=1)


class ErrorWhereTumour(torch.nn.Module):
    """Comparator stand-in: the predicted tumour is all wrong (error logit +10 there, -10 elsewhere)."""

    def forward(self, image: torch.Tensor, seg: torch.Tensor, synth: torch.Tensor | None = None) -> dict:
        quality = torch.full((image.shape[0], 3), 0.2, device=image.device)
        return {"quality": quality, "error_logits": seg[:, 2:3] * 20.0 - 10.0}


#: the devices the alarm's whole path runs on in these tests: preprocessing, networks and the way back
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lps", "oblique"])
def test_planted_error_through_real_predictor(bundle: Path, kind: str, device: str) -> None:
    alarm = DSCAlarm.from_bundle(bundle, device=device, progress=False)
    alarm.predictor.segmenter = BrightIsTumour()
    alarm.predictor.comparator = ErrorWhereTumour()
    report = alarm((phantom(), affine_for(kind)))
    truth = phantom() > 100
    err = report.error_probability > 0.5
    # 2-2.5 mm working voxels: the block loses its partial-volume rim twice (in and out), not its place.
    assert 2 * (err & truth).sum() / (err.sum() + truth.sum()) > 0.75
    np.testing.assert_allclose(np.argwhere(err).mean(0), np.argwhere(truth).mean(0), atol=1.0)
    assert ((report.segmentation == 2) == err).mean() > 0.99
    assert report.predicted_dsc["synthcp"]["tumour"] == pytest.approx(0.2)


class MustNotRun(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the bundle's segmenter ran although a mask was given")


@pytest.mark.parametrize("device", DEVICES)
def test_real_predictor_judges_a_given_mask(bundle: Path, tmp_path: Path, device: str) -> None:
    """The given mask (another tool's values) reaches the comparator: its planted error lands on the mask's tumour."""
    alarm = DSCAlarm.from_bundle(bundle, device=device, progress=False)
    alarm.predictor.segmenter = MustNotRun()
    alarm.predictor.comparator = ErrorWhereTumour()
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[BLOCK] = 5
    path = save_like(mask, affine_for("lps"), tmp_path / "other_tool.nii.gz")
    report = alarm((phantom(), affine_for("lps")), mask=path, labels="tumour=5")
    truth = mask == 5
    assert np.array_equal(report.segmentation == 2, truth) and "segment" not in report.seconds
    err = report.error_probability > 0.5
    assert 2 * (err & truth).sum() / (err.sum() + truth.sum()) > 0.75
    assert report.judged["labels"] == {"tumour": 5}


class Bright(torch.nn.Module):
    """A stand-in fold segmenter: tumour where the preprocessed image is bright (the planted block), else
    background; with ``empty`` background everywhere."""

    def __init__(self, empty: bool = False) -> None:
        super().__init__()
        self.empty = empty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tumour = torch.full_like(x, -10.0) if self.empty else 10.0 * (x - 0.5)
        return torch.cat([torch.zeros_like(x), torch.full_like(x, -10.0), tumour], dim=1)


def test_pairwise_dice_with_and_without_fold_models(bundle: Path, tmp_path: Path) -> None:
    """Fold models found in crossval/ join the judged mask in the pairwise-Dice ensemble; without them its
    predictions are None (not SynthCP's under another name)."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[BLOCK] = 2
    path = save_like(mask, affine_for("lps"), tmp_path / "mask.nii.gz")
    alone = DSCAlarm.from_bundle(bundle, device="cpu", progress=False)((phantom(), affine_for("lps")), mask=path)
    assert alone.predicted_dsc["pairwise_dice"] == {"pancreas": None, "tumour": None}
    assert alone.predicted_dsc["synthcp_pairwise"] == {"pancreas": None, "tumour": None}
    assert "pairwise" not in alone.seconds

    with_folds = _copy_bundle(bundle, tmp_path / "with_folds")
    for i in range(2):
        (with_folds / "crossval" / f"fold_{i}").mkdir(parents=True)
        shutil.copy(bundle / "models" / "segmenter.pt", with_folds / "crossval" / f"fold_{i}" / "segmenter.pt")
    alarm = DSCAlarm.from_bundle(with_folds, device="cpu", progress=False)
    assert len(alarm.predictor.fold_segmenters) == 2 and alarm.predictor.info["model"]["fold_segmenters"] == 2
    alarm.predictor.fold_segmenters = [Bright(), Bright(empty=True)]
    report = alarm((phantom(), affine_for("lps")), mask=path)
    # members: the mask M, A = the bright block (≈ M), B = empty: (Dice(M, A) + 0 + 0) / 3 for the tumour
    assert report.predicted_dsc["pairwise_dice"]["tumour"] == pytest.approx(1 / 3, abs=0.03)
    assert report.predicted_dsc["pairwise_dice"]["pancreas"] == 0.0  # not predicted -> 0, as for every method
    synthcp, pairwise = (report.predicted_dsc[m]["tumour"] for m in ("synthcp", "pairwise_dice"))
    assert report.predicted_dsc["synthcp_pairwise"]["tumour"] == pytest.approx((synthcp + pairwise) / 2, abs=1e-6)
    assert report.seconds["pairwise"] > 0


def test_bundle_files_are_plain_json(bundle: Path) -> None:
    """networks.json and settings.json are written and read as JSON (no Python reprs), by the study's own loaders."""
    from functools import partial

    from synthcp3d.workflows.common import describe_factory
    from synthcp3d.workflows.pancreas_model import load_network, load_study
    from synthcp3d.workflows.trained import build_network

    specs = json.loads((bundle / "models" / "networks.json").read_text())
    assert specs["comparator_synthcp"]["norm"] == ["group", {"num_groups": 8}]
    study = load_study(bundle)
    assert study.roi_size == tuple(TINY_PANCREAS["roi_size"]) and study.settings_name == "tiny-untrained"
    comparator = load_network(study, "comparator_synthcp")
    assert not comparator.training and sum(p.numel() for p in comparator.parameters()) > 0
    with pytest.raises(SynthCPInputError, match="unexpected _target_"):
        build_network({"_target_": "os.system", "command": "true"}, "evil")
    with pytest.raises(SynthCPInputError, match="cannot be written as JSON"):
        describe_factory(partial(torch.nn.Identity, unused=object()))


def _copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, symlinks=True, copy_function=os.symlink)  # cheap: weights are linked
    models = dest / "models"
    for name in ("networks.json", "settings.json"):
        target = models / name
        data = target.read_text()
        target.unlink()
        target.write_text(data)
    return dest


def test_bad_bundles(bundle: Path, inputs: Path, tmp_path: Path, capsys) -> None:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp_path / "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    cases["not trained"] = (tmp_path / "empty", "not a trained pancreas bundle")
    no_weights = _copy_bundle(bundle, tmp_path / "no_weights")
    (no_weights / "models" / "generator.pt").unlink()
    cases["weights absent"] = (no_weights, "generator.pt are absent")
    labels = _copy_bundle(bundle, tmp_path / "labels")
    settings = json.loads((labels / "models" / "settings.json").read_text())
    settings["class_names"] = ["background", "pancreas", "tumour", "cyst"]
    (labels / "models" / "settings.json").write_text(json.dumps(settings))
    cases["label count"] = (labels, "4 labels")
    specs_case = _copy_bundle(bundle, tmp_path / "specs")
    specs = json.loads((specs_case / "models" / "networks.json").read_text())
    specs["comparator_synthcp"]["num_classes"] = 4
    (specs_case / "models" / "networks.json").write_text(json.dumps(specs))
    cases["network label count"] = (specs_case, "label count differs")
    shape = _copy_bundle(bundle, tmp_path / "shape")
    specs = json.loads((shape / "models" / "networks.json").read_text())
    specs["generator"]["channels"] = [32, 8]
    (shape / "models" / "networks.json").write_text(json.dumps(specs))
    cases["weights mismatch"] = (shape, "do not fit network 'generator'")
    truncated = _copy_bundle(bundle, tmp_path / "truncated")
    (truncated / "models" / "mask_vae.pt").unlink()
    (truncated / "models" / "mask_vae.pt").write_bytes((bundle / "models" / "mask_vae.pt").read_bytes()[:1000])
    cases["truncated weights"] = (truncated, "mask_vae.pt")
    src = inputs / "lps.nii.gz"
    for name, (path, needle) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        status = cli.main(["alarm", str(src), "--bundle", str(path), "--out", str(out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert status == 2, name
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, (name, err)
        assert not out.exists(), name  # nothing written, not even the output folder
    if not torch.cuda.is_available():
        with pytest.raises(SynthCPInputError, match="CUDA is not available"):
            DSCAlarm.from_bundle(bundle, device="cuda")


@needs_cuda
def test_real_bundle_on_cuda(bundle: Path) -> None:
    alarm = DSCAlarm.from_bundle(bundle, device="cuda", progress=False)
    assert isinstance(alarm.predictor, BundlePredictor) and alarm.predictor.device.type == "cuda"
    report = alarm((phantom(), affine_for("oblique")))
    assert report.segmentation.shape == SHAPE and np.allclose(report.affine, affine_for("oblique"))


def test_alarm_through_monai_bundle_run(bundle: Path, inputs: Path, tmp_path: Path) -> None:
    """The config snippet proposed for the bundle (``configs/alarm.yaml``) runs with MONAI's bundle runner."""
    from monai.bundle import run

    common = Path(__file__).resolve().parents[1] / "bundles" / "pancreas_ct_synthcp" / "configs" / "common.yaml"
    config = tmp_path / "alarm.yaml"
    config.write_text(
        "input_dir: null\n"
        "alarm_dir: \"$@output_dir + '/alarm'\"\n"
        "alarm:\n"
        "  _target_: synthcp3d.alarm.cli.run_alarm\n"
        "  _mode_: callable\n"
        "  inputs: ['@input_dir']\n"
        "  bundle: '@output_dir'\n"
        "  out: '@alarm_dir'\n"
        "  device: '@device'\n"
        "  progress: false\n"
        "run:\n"
        '  - "$@alarm()"\n'
    )
    out = tmp_path / "trained"
    shutil.copytree(bundle, out, symlinks=True, copy_function=os.symlink)
    run(
        config_file=[str(common), str(config)],
        bundle_root=str(common.parents[1]),
        output_dir=str(out),
        input_dir=str(inputs / "lps.nii.gz"),
        device="cpu",
    )
    assert (out / "alarm" / "lps" / "segmentation.nii.gz").is_file()
    assert (out / "alarm" / "summary.csv").read_text().count("\n") == 2
