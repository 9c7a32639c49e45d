"""``synthcp export``: a trained pancreas run as a self-contained MONAI bundle, run by ``python -m monai.bundle``.

One tiny run is exported once per module: the bundle's own networks with random weights (`make_untrained_bundle`;
the files and code paths do not depend on training) plus two cross-validation fold segmenters. The exported bundle
then runs in a subprocess, from another directory, while the run folder is moved away; its segmentations and
predicted DSC are compared with the DSC alarm on the original run.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_PANCREAS, make_untrained_bundle, relative_files

from synthcp3d import cli
from synthcp3d.alarm import DSCAlarm
from synthcp3d.alarm.predictor import METHODS
from synthcp3d.data.phantom import make_pancreas_case
from synthcp3d.data.volume_io import save_like
from synthcp3d.engines.checkpoint import save_weights
from synthcp3d.errors import SynthCPInputError
from synthcp3d.export import export_bundle, verify_bundle_metadata
from synthcp3d.export.runtime import list_volumes
from synthcp3d.workflows.trained import build_network, load_network_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # end-to-end: not in `make test-fast`

# a coarse working grid keeps the real-size phantom patients small (about 50 x 50 x 20 voxels)
SETTINGS = {**TINY_PANCREAS, "spacing": [6.0, 6.0, 6.0], "settings_name": "tiny-export"}
EXPECTED_FILES = {
    "LICENSE", "configs/inference.yaml", "configs/metadata.json", "configs/logging.conf", "docs/README.md",
    "models/segmenter.pt", "models/generator.pt", "models/comparator_synthcp.pt", "models/mask_vae.pt",
    "models/segmenter_fold_0.pt", "models/segmenter_fold_1.pt", "models/networks.json", "models/settings.json",
    "models/vae_alarm_regressor.json", "models/alarm_calibration.json",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as the study leaves it for the alarm: models/, two folds' segmenters in crossval/, and a
    calibrated flag (threshold and method, as `synthcp alarm calibrate` stores them)."""
    run = make_untrained_bundle(tmp_path_factory.mktemp("study") / "run", SETTINGS, seed=0)
    (run / "models" / "alarm_calibration.json").write_text(json.dumps({"threshold": 0.3, "flag_method": "synthcp"}))
    spec = load_network_spec(run / "models", "segmenter", "train_segmenter")
    for i in range(2):
        torch.manual_seed(100 + i)
        save_weights({"segmenter": build_network(spec, "segmenter")}, run / "crossval" / f"fold_{i}" / "segmenter.pt")
    return run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom CTs: one as generated (RAS), one stored LPS (the same patient's voxels flipped in x and y)."""
    folder = tmp_path_factory.mktemp("cts")
    ras = make_pancreas_case(np.random.default_rng(5), shape=(32, 32, 12))
    save_like(ras.image, ras.affine, folder / "ras_case.nii.gz")
    lps = make_pancreas_case(np.random.default_rng(6), shape=(28, 30, 10))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [lps.image.shape[0] - 1, lps.image.shape[1] - 1]
    save_like(lps.image[::-1, ::-1].copy(), lps.affine @ flip, folder / "lps_case.nii.gz")
    (folder / ".hidden.nii.gz").write_bytes(b"")  # skipped, as the alarm skips hidden files
    return folder


@pytest.fixture(scope="module")
def exported(run_dir: Path, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Export, move the run away, run the bundle with ``python -m monai.bundle`` from an unrelated directory."""
    root = tmp_path_factory.mktemp("exported")
    bundle = export_bundle(run_dir, root / "pancreas_bundle")
    out, elsewhere, moved = root / "out", root / "cwd", run_dir.with_name("run_moved_away")
    elsewhere.mkdir()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.yaml"),
           "--dataset_dir", str(inputs), "--output_dir", str(out), "--device", "cpu"]
    os.replace(run_dir, moved)
    try:
        result = subprocess.run(cmd, cwd=elsewhere, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.replace(moved, run_dir)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return bundle, out


def test_layout_networks_and_license(exported: tuple[Path, Path], run_dir: Path) -> None:
    bundle, _ = exported
    assert {str(p) for p in relative_files(bundle)} == EXPECTED_FILES
    specs = json.loads((bundle / "models" / "networks.json").read_text())
    assert specs == {k: v for k, v in json.loads((run_dir / "models" / "networks.json").read_text()).items()
                     if k in ("segmenter", "generator", "comparator_synthcp", "mask_vae")}
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    assert parser.get("network_def") == specs["segmenter"]  # the run's segmenter, as config
    assert parser.get("spacing") == SETTINGS["spacing"] and parser.get("sw_roi_size") == SETTINGS["patch_size"]
    for i in range(2):  # the folds' weights travel byte for byte
        assert (bundle / "models" / f"segmenter_fold_{i}.pt").read_bytes() == (
            run_dir / "crossval" / f"fold_{i}" / "segmenter.pt").read_bytes()
    project_license = Path(__file__).resolve().parents[1] / "bundles" / "pancreas_ct_synthcp" / "LICENSE"
    assert (bundle / "LICENSE").read_text() == project_license.read_text()
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file" in readme and str(run_dir.resolve()) in readme
    assert not list(bundle.parent.glob(".pancreas_bundle.*"))  # no temporary sibling left


def test_config_preprocessing_is_the_study_preprocessing(exported: tuple[Path, Path], inputs: Path) -> None:
    """The config's stock-MONAI chain gives the study's preprocessed volume exactly (values and affine)."""
    from monai.bundle import ConfigParser

    from synthcp3d.workflows.pancreas_model import load_study

    bundle, _ = exported
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    study = load_study(bundle)
    for path in sorted(inputs.glob("*_case.nii.gz")):
        ours = parser.get_parsed_content("preprocessing")({"image": str(path)})["image"]
        theirs = study.preprocessing(label_key=None)({"image": str(path)})["image"]
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
        assert torch.equal(ours.as_tensor(), theirs.as_tensor())
        assert torch.allclose(ours.affine, theirs.affine)


def test_metadata_verified_offline_and_schema_can_fail(exported: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, _ = exported
    meta_file = bundle / "configs" / "metadata.json"
    verify_bundle_metadata(meta_file)
    meta = json.loads(meta_file.read_text())
    assert meta["required_packages_version"]["synthcp"] and "optional_packages_version" not in meta
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    assert meta["synthcp_export"]["fold_segmenters"] == 2
    breakages = {
        "task": lambda m: m.pop("task"),
        "spatial_shape": lambda m: m["network_data_format"]["inputs"]["image"].pop("spatial_shape"),
        "is_patch_data": lambda m: m["network_data_format"]["outputs"]["pred"].update(is_patch_data="yes"),
        "required_packages_version": lambda m: m.pop("required_packages_version"),
    }
    for field, breakage in breakages.items():
        broken = json.loads(meta_file.read_text())
        breakage(broken)
        path = tmp_path / f"no_{field}.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="Failed validating"):
            verify_bundle_metadata(path)
    with pytest.raises(FileNotFoundError, match="offline"):  # never falls back to downloading
        verify_bundle_metadata(meta_file, schema=tmp_path / "absent_schema.json")
    for study_meta in sorted((Path(__file__).resolve().parents[1] / "bundles").glob("*/configs/metadata.json")):
        verify_bundle_metadata(study_meta)  # the schema agrees with the project's hand-written study bundles


def test_monai_bundle_run_matches_the_alarm_on_the_run(exported: tuple[Path, Path], inputs: Path, run_dir: Path):
    """One segmentation per input, on the input's grid, equal to what the alarm on the original run segments; the
    predicted DSC (every method, pairwise Dice included) and the flag equal the alarm's on the original run."""
    _, out = exported
    cases = sorted(p.name.removesuffix(".nii.gz") for p in inputs.glob("*_case.nii.gz"))
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == [f"{c}_seg.nii.gz" for c in cases]
    rows = {r["case"]: r for r in json.loads((out / "predicted_dsc.json").read_text())}
    with open(out / "predicted_dsc.csv", newline="") as handle:
        table = {r["case"]: r for r in csv.DictReader(handle)}
    assert sorted(rows) == sorted(table) == cases
    alarm = DSCAlarm.from_bundle(run_dir, device="cpu", progress=False)
    assert (alarm.threshold, alarm.flag_method) == (0.3, "synthcp")  # the run's calibration, exported with it
    for case in cases:
        source = nib.load(inputs / f"{case}.nii.gz")
        written = nib.load(out / f"{case}_seg.nii.gz")
        seg = np.asarray(written.dataobj)
        assert seg.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
        assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
        reference = alarm(inputs / f"{case}.nii.gz")
        assert len(np.unique(reference.segmentation)) >= 2  # not a blank map: the comparison below means something
        assert np.array_equal(seg, reference.segmentation)
        for method in METHODS:
            for cls in ("pancreas", "tumour"):
                expected = reference.predicted_dsc[method][cls]
                assert expected is not None, (method, cls)  # pairwise Dice too: the folds were exported
                assert rows[case]["predicted_dsc"][method][cls] == pytest.approx(expected, abs=1e-6), (case, method)
                assert float(table[case][f"{cls}_dsc_{method}"]) == pytest.approx(expected, abs=1e-4)
        assert rows[case]["flagged"] == reference.flagged and table[case]["flagged"] == str(reference.flagged).lower()
        assert (rows[case]["threshold"], rows[case]["flag_method"]) == (0.3, "synthcp")


def test_refusals_leave_nothing_behind(run_dir: Path, tmp_path: Path, capsys) -> None:
    # not a finished run: every missing file named; no output folder, no parent made
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir / "models", unfinished / "models")
    for name in ("generator.pt", "vae_alarm_regressor.json"):
        (unfinished / "models" / name).unlink()
    target = tmp_path / "new" / "bundle"
    with pytest.raises(SynthCPInputError, match=r"not a finished pancreas run: missing models/generator\.pt, "
                                                r"models/vae_alarm_regressor\.json"):
        export_bundle(unfinished, target)
    assert cli.main(["export", "--bundle", str(tmp_path / "nowhere"), "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line
    assert not (tmp_path / "new").exists()

    # weights that do not load: found before anything is renamed into place; the parents made are removed again
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "models" / "mask_vae.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SynthCPInputError, match="mask_vae"):
        export_bundle(broken, target)
    assert not (tmp_path / "new").exists()

    # an existing non-empty folder: refused and untouched, replaced with --force; the run itself is never a target
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(SynthCPInputError, match="exists and is not empty"):
        export_bundle(run_dir, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(SynthCPInputError, match="holds the run"):
        export_bundle(run_dir, run_dir.parent, force=True)
    assert cli.main(["export", "--bundle", str(run_dir), "--out", str(taken), "--force"]) == 0
    assert not (taken / "keep.txt").exists() and (taken / "configs" / "inference.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "taken", "unfinished"]  # no temporary left


def test_input_folder_refusals(tmp_path: Path) -> None:
    with pytest.raises(SynthCPInputError, match="--dataset_dir"):
        list_volumes(None)
    with pytest.raises(SynthCPInputError, match="does not exist"):
        list_volumes(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SynthCPInputError, match="holds no NIfTI"):
        list_volumes(tmp_path)
