"""The pancreas bundle end to end at tiny size: every config through ``python -m monai.bundle run``.

The stages run once (module-scoped fixture, subprocesses exactly as a user types them); the tests then check each
stage's outputs, recompute the Table-2 report from the saved per-case predictions with scipy/numpy, and exercise
``synthcp run``'s skip/resume logic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import TINY_PANCREAS_RUN as TINY
from scipy import stats

from synthcp3d.errors import SynthCPInputError

pytestmark = pytest.mark.slow  # end-to-end: not in `make test-fast`

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "pancreas_ct_synthcp"
STAGES = ("prepare", "train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_vae_alarm",
          "evaluate", "inference")


def _command(stage: str, data: Path, out: Path) -> list[str]:
    configs = json.dumps([str(BUNDLE / "configs" / "common.yaml"), str(BUNDLE / "configs" / f"{stage}.yaml")])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs,
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
           "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--output_dir", str(out)]
    for key, value in TINY.items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    from synthcp3d.data.phantom import make_pancreas_dataset

    root = tmp_path_factory.mktemp("pancreas_bundle")
    data, out = root / "data", root / "out"
    make_pancreas_dataset(data, cases=10, seed=3, test_cases=1, shape=(48, 48, 24), progress=False)
    for stage in STAGES:
        result = subprocess.run(_command(stage, data, out), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"stage {stage} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert (out / stage / "done.json").is_file(), stage
    return data, out


def test_prepare_split_and_folds(run_dir):
    _, out = run_dir
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    assert len(meta["train"]) == 7 and len(meta["test"]) == 3  # round(10 * 200 / 281) = 7
    assert not set(meta["train"]) & set(meta["test"])
    folded = [c for fold in meta["folds"] for c in fold]
    assert sorted(folded) == sorted(meta["train"]) and len(meta["folds"]) == 2
    assert all(Path(c["image"]).is_file() for c in meta["cases"].values())


def test_crossval_predicts_every_training_case_once(run_dir):
    _, out = run_dir
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    records = json.loads((out / "crossval" / "cases.json").read_text())
    assert sorted(records) == sorted(meta["train"])
    for case, r in records.items():
        assert case in meta["folds"][r["fold"]]  # predicted by the model that held it out
        assert Path(r["pred"]).is_file() and len(r["true_dsc"]) == 3 and len(r["mc_feature"]) == 3
        pred = np.asarray(nib.load(r["pred"]).dataobj)
        assert pred.shape == tuple(meta["cases"][case]["shape"]) and set(np.unique(pred)) <= {0, 1, 2}
        voxel_ml = float(np.prod(np.abs(np.diag(nib.load(r["pred"]).affine)[:3]))) / 1000.0  # from the file
        counts = [(pred == k).sum() for k in range(3)]
        expected = [np.log(n * voxel_ml) if n else np.nan for n in counts]
        np.testing.assert_allclose(r["volume_feature"], expected, rtol=1e-6, equal_nan=True)
    assert (out / "models" / "mc_dropout_regressor.json").is_file()
    assert (out / "models" / "volume_regressor.json").is_file()


def test_models_load_weights_only(run_dir):
    _, out = run_dir
    expected = {"segmenter.pt": "segmenter", "generator.pt": "generator", "comparator_synthcp.pt": "comparator",
                "comparator_direct.pt": "comparator", "mask_vae.pt": "vae"}
    for name, key in expected.items():
        state = torch.load(out / "models" / name, weights_only=True)
        assert key in state and len(state[key]) > 0
    networks = json.loads((out / "models" / "networks.json").read_text())
    assert networks["segmenter"]["name"] == "ahnet" and networks["comparator_direct"]["mode"] == "direct"
    assert json.loads((out / "models" / "vae_alarm_regressor.json").read_text())


def test_report_files_and_plots(run_dir):
    _, out = run_dir
    ev = out / "evaluate"
    for name in ("report.md", "report.csv", "report.json", "per_case.csv"):
        assert (ev / name).is_file(), name
    md = (ev / "report.md").read_text()
    for method in ("Predicted volume (no image)", "Direct Prediction", "MC-Dropout", "VAE alarm", "SynthCP",
                   "SynthCP + VAE alarm", "Pairwise Dice (fold ensemble)", "SynthCP + pairwise Dice"):
        assert f"| {method} |" in md
    assert len(list(ev.glob("scatter_*_tumour.png"))) == 10  # 8 methods + 2 x̂ ablations
    assert (ev / "risk_coverage_tumour.png").is_file() and (ev / "comparison_examples.png").is_file()
    assert len(list((ev / "predictions").glob("*_pred.nii.gz"))) == 3


def test_table_recomputed_from_per_case_csv(run_dir):
    import csv

    from synthcp3d.metrics import risk_coverage

    _, out = run_dir
    report = json.loads((out / "evaluate" / "report.json").read_text())
    with open(out / "evaluate" / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for cls in ("tumour", "pancreas"):
        true = np.array([float(r[f"true_{cls}"]) for r in rows])
        keep = ~np.isnan(true)
        assert report["counts"][cls]["n_undefined"] == int((~keep).sum())
        for method, saved in report["tables"][cls].items():
            pred = np.array([float(r[f"{method}|{cls}"]) for r in rows])[keep]
            t = true[keep]
            err = np.abs(pred - t)
            if keep.sum() == 0:
                assert saved["MAE"] is None
                continue
            assert saved["MAE"] == pytest.approx(100 * err.mean(), abs=1e-6)
            assert saved["STD"] == pytest.approx(100 * err.std(ddof=0), abs=1e-6)
            defined = keep.sum() >= 2 and np.ptp(pred) > 0 and np.ptp(t) > 0
            rc = risk_coverage(pred, t)
            assert saved["AURC"] == pytest.approx(rc["AURC"], abs=1e-6)
            assert saved["E-AURC"] == pytest.approx(rc["E-AURC"], abs=1e-6)
            if defined:
                assert saved["PC"] == pytest.approx(100 * stats.pearsonr(pred, t)[0], abs=1e-6)
                assert saved["SC"] == pytest.approx(100 * stats.spearmanr(pred, t)[0], abs=1e-6)
            else:
                assert saved["PC"] is None and saved["SC"] is None


def test_inference_writes_on_input_grid(run_dir):
    data, out = run_dir
    inputs = sorted((data / "Task07_Pancreas" / "imagesTs").glob("*.nii.gz"))
    rows = json.loads((out / "inference" / "predicted_dsc.json").read_text())
    assert len(rows) == len(inputs) == 1
    seg = nib.load(out / "inference" / f"{rows[0]['case']}_seg.nii.gz")
    src = nib.load(inputs[0])
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine, atol=1e-3)
    assert 0.0 <= rows[0]["SynthCP|tumour"] <= 1.0
    # the same config ran the DSC alarm: flag, error map and segmentation on the input's own grid
    case = inputs[0].name.removesuffix(".nii.gz")
    report = json.loads((out / "alarm" / case / "report.json").read_text())
    assert isinstance(report["flagged"], bool)
    for name in ("segmentation.nii.gz", "error_probability.nii.gz"):
        written = nib.load(out / "alarm" / case / name)
        assert written.shape == src.shape and np.allclose(written.affine, src.affine, atol=1e-3)
    # one way back to the input grid: the inference stage and the alarm write the same segmentation
    alarm_seg = np.asarray(nib.load(out / "alarm" / case / "segmentation.nii.gz").dataobj)
    assert np.array_equal(alarm_seg, np.asarray(seg.dataobj))
    assert (out / "alarm" / "summary.csv").read_text().count("\n") == 2


def test_trained_models_score_a_case_from_the_folder_alone(run_dir):
    """The trained-model module without the bundle config (networks built from networks.json) scores a test case as
    the evaluate stage did (MC-Dropout too: its masks are seeded per case)."""
    import csv

    from synthcp3d.workflows.common import case_seed
    from synthcp3d.workflows.pancreas_model import load_study, load_trained_models, load_volume
    from synthcp3d.workflows.pancreas_scoring import score_case, segment_volume

    _, out = run_dir
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    with open(out / "evaluate" / "per_case.csv", newline="") as f:
        row = next(csv.DictReader(f))
    study = load_study(out)
    models = load_trained_models(study)
    image = load_volume(meta["cases"][row["case"]]["image"]).astype(np.float32)
    saved = load_volume(out / "evaluate" / "predictions" / f"{row['case']}_pred.nii.gz")
    assert (segment_volume(study, models.segmenter, image) == saved).mean() > 0.99
    assert len(models.fold_segmenters) == len(meta["folds"])
    scores = score_case(study, models, image, saved, seed=case_seed(study, row["case"]))
    for method in ("Predicted volume (no image)", "Direct Prediction", "MC-Dropout", "VAE alarm", "SynthCP",
                   "SynthCP + VAE alarm", "SynthCP, x̂ = blank", "Pairwise Dice (fold ensemble)",
                   "SynthCP + pairwise Dice"):
        for k, cls in ((1, "pancreas"), (2, "tumour")):
            assert scores.quality[method][k] == pytest.approx(float(row[f"{method}|{cls}"]), abs=1e-4), (method, cls)


def test_study_runner_skips_finished_stages(run_dir, capsys):
    from synthcp3d.study_cli import run_study

    data, out = run_dir
    timings = run_study("pancreas", out, data=data, device="cpu", extra={"common": TINY})  # the settings they ran with
    assert timings == {}
    assert capsys.readouterr().out.count("skipped") == len(STAGES)
    with pytest.raises(SynthCPInputError, match="unknown stage"):
        run_study("pancreas", out, data=data, stages=["nope"])
    with pytest.raises(SynthCPInputError, match="--data"):
        run_study("pancreas", out)


def test_metadata_fields():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright"):
        assert meta.get(key), key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["outputs"]["pred"]["num_channels"] == 3
    for stage in STAGES:
        assert (BUNDLE / "configs" / f"{stage}.yaml").is_file()
    assert (BUNDLE / "docs" / "README.md").is_file() and (BUNDLE / "LICENSE").is_file()


def test_true_dsc_recomputed_on_native_grid_independently(run_dir):
    """per_case.csv's true DSC = the saved working-grid prediction resampled by nibabel (not MONAI) onto the
    source label's grid, Dice by numpy."""
    import csv

    from nibabel.processing import resample_from_to

    _, out = run_dir
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    with open(out / "evaluate" / "per_case.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    for case, row in rows.items():
        pred_img = nib.load(out / "evaluate" / "predictions" / f"{case}_pred.nii.gz")
        label_img = nib.load(meta["cases"][case]["source_label"])
        native = np.asarray(resample_from_to(pred_img, label_img, order=0).dataobj).round().astype(int)
        label = np.asarray(label_img.dataobj).astype(int)
        for k, cls in ((1, "pancreas"), (2, "tumour")):
            p, t = native == k, label == k
            expected = np.nan if not (p.any() or t.any()) else 2 * (p & t).sum() / (p.sum() + t.sum())
            saved = float(row[f"true_{cls}"])
            if np.isnan(expected):
                assert np.isnan(saved)
            else:
                assert saved == pytest.approx(expected, abs=0.02), (case, cls)


def test_report_evidence_sections(run_dir):
    _, out = run_dir
    md = (out / "evaluate" / "report.md").read_text()
    for heading in ("## The segmenter being judged: AH-Net", "## Synthesis quality", "## Does the comparator use x̂?",
                    "## Pixel-level error maps"):
        assert heading in md, heading
    for row in ("| 3D SPADE G(y) |", "| class-mean painter |", "| SynthCP, x̂ = blank |", "| MSP (1 - max softmax) |"):
        assert row in md, row
    extra = json.loads((out / "evaluate" / "report.json").read_text())["extra"]
    assert set(extra["pixel"]) == {"pooled", "per_image"}
    assert extra["segmenter"]["splits"]["test (final segmenter)"]["tumour"]["n"] >= 1
    assert json.loads((out / "models" / "vae_alarm_regressor.json").read_text())["vae_feature"] == "loss"
    assert json.loads((out / "models" / "painter.json").read_text())["kind"] == "class_mean_painter"


def test_mask_sensitivity_benchmark_on_a_trained_folder(run_dir, tmp_path):
    """benchmarks/mask_sensitivity.py scores one test image's masks with every predictor: the true DSC of the ground
    truth beats its tumour shifted 20 mm and a tumour elsewhere scores 0, every prediction lies in [0, 1], the figure
    is written."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from mask_sensitivity import PREDICTORS, run_folder

    _, out = run_dir
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    first = meta["test"][0]
    rows = run_folder(out, max_cases=1, figure=tmp_path / "masks.png")
    assert {r["case"] for r in rows} == {first} and {"segmenter", "ground truth"} <= {r["mask"] for r in rows}
    label = np.asarray(nib.load(meta["cases"][first]["label"]).dataobj)
    true = {r["mask"]: r["true"] for r in rows}
    if (label == 2).any():  # judged on the case's own (finer) label grid: the ground truth beats its shifted copy
        assert true["ground truth"] > true["tumour shifted 20 mm"] and true["tumour elsewhere in the gland"] == 0
        assert (tmp_path / "masks.png").stat().st_size > 0
    for row in rows:
        for name in PREDICTORS:
            assert np.isnan(row[name]) or 0.0 <= row[name] <= 1.0, (row["mask"], name)


def test_synthesis_difference_benchmark_on_a_trained_folder(run_dir):
    """benchmarks/synthesis_difference.py runs on a study folder: mean differences in HU, shares in [0, 1]."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthesis_difference import difference_split

    _, out = run_dir
    figures = difference_split(out, margin=1)
    assert set(figures) == {"mean_hu_wrong", "mean_hu_right_near", "mean_hu_far", "far_share_of_difference",
                            "far_share_of_wrong_voxels"}
    assert all(v >= 0 for v in figures.values() if np.isfinite(v))
    assert 0 <= figures["far_share_of_difference"] <= 1 and 0 <= figures["far_share_of_wrong_voxels"] <= 1
