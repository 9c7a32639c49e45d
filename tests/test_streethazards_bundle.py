"""The StreetHazards bundle end to end on a tiny synthetic data set: every stage once (module fixture), then the
tables are recomputed independently from the saved per-image scores with scikit-learn."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from helpers import TINY_STREETHAZARDS as TINY
from helpers import sklearn_saved_miou

from synthcp2d.data import make_streethazards_dataset
from synthcp3d.errors import SynthCPInputError
from synthcp3d.study_cli import STUDIES, bundle_dir, run_study, stage_command

pytestmark = pytest.mark.slow  # end-to-end: not in `make test-fast`

METHODS = ["SynthCP (t=0.999)", "SynthCP (t=0.999), x̂ = class-mean painter", "SynthCP (t=0.999), x̂ = blank", "MSP", "MSP+CRF", "MSP+CRF (image-guided)", "MC-Dropout", "AE", "Max-logit", "Entropy"]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("streethazards")
    data = make_streethazards_dataset(
        root / "data", cases=4, seed=0, size=(64, 32), progress=False, val_cases=1, test_cases=4
    )
    out = root / "out"
    timings = run_study("streethazards", out, data=data, demo=True, extra=TINY)
    return out, data, timings


def _fpr95(target: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(target, score)
    return 100.0 * float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def test_every_stage_ran_and_tables_printed(study_run):
    out, _, timings = study_run
    assert list(timings) == list(STUDIES["streethazards"].stages)
    report = (out / "evaluate" / "report.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report
    for t in ("0.8", "0.9", "0.99", "0.999", "1"):
        assert f"| SynthCP (t={t}) |" in report
    assert "reduction `per_image`" in report and "reduction `pooled`" in report
    assert "## Synthesis quality: G(ground truth) vs the real image" in report
    assert "| 2D SPADE G(y) |" in report and "| class-mean painter |" in report
    saved = json.loads((out / "evaluate" / "report.json").read_text())
    miou = saved["segmenter_miou"]
    assert saved["segmenter"] == "fcn8" and f"(fcn8 segmenter mIoU {miou:.3f})" in report
    assert (out / "evaluate" / "fig7.png").stat().st_size > 1000
    tables = json.loads((out / "evaluate" / "report.json").read_text())["tables"]
    for reduction in ("per_image", "pooled"):
        for method in METHODS:
            values = tables[reduction][method]
            assert values["reduction"] == reduction
            assert all(0.0 <= values[k] <= 100.0 for k in ("FPR95", "AUROC", "AUPR"))


def test_per_image_table_recomputed_with_sklearn(study_run):
    out, _, _ = study_run
    tables = json.loads((out / "evaluate" / "report.json").read_text())["tables"]["per_image"]
    files = sorted((out / "evaluate" / "scores").glob("*.npz"))
    assert files
    for method in METHODS:
        ap, auc, fpr = [], [], []
        for path in files:
            with np.load(path) as data:
                target, score = data["is_anomaly"].ravel(), data[method].ravel().astype(np.float64)
            if 0 < target.sum() < target.size:  # the benchmark's rule: images with both kinds of pixel
                ap.append(100 * average_precision_score(target, score))
                auc.append(100 * roc_auc_score(target, score))
                fpr.append(_fpr95(target, score))
        assert ap, "no test image holds an anomaly"
        assert tables[method]["AUPR"] == pytest.approx(np.mean(ap), abs=1e-3)
        assert tables[method]["AUROC"] == pytest.approx(np.mean(auc), abs=1e-3)
        assert tables[method]["FPR95"] == pytest.approx(np.mean(fpr), abs=1e-3)


def test_pooled_table_recomputed_with_sklearn(study_run):
    out, _, _ = study_run
    tables = json.loads((out / "evaluate" / "report.json").read_text())["tables"]["pooled"]
    files = sorted((out / "evaluate" / "scores").glob("*.npz"))
    for method in METHODS:  # the auto-encoder's error exceeds 1, -max logit is negative, the CRFs' MSP saturates
        targets, scores = [], []
        for path in files:
            with np.load(path) as data:
                targets.append(data["is_anomaly"].ravel())
                scores.append(data[method].ravel().astype(np.float64))
        target, score = np.concatenate(targets), np.concatenate(scores)
        # the streaming count table holds every distinct score of this small split: the exact ranking
        assert tables[method]["precision_bits"] == 23
        assert tables[method]["AUROC"] == pytest.approx(100 * roc_auc_score(target, score), abs=1e-6), method
        assert tables[method]["AUPR"] == pytest.approx(100 * average_precision_score(target, score), abs=1e-6), method
        assert tables[method]["FPR95"] == pytest.approx(_fpr95(target, score), abs=1e-6), method


def test_segmenter_miou_recomputed_with_sklearn(study_run):
    """The headings' mIoU: the saved predictions against the cached labels, pooled over the test images, the 13
    known classes, anomaly pixels excluded."""
    out, _, _ = study_run
    report = json.loads((out / "evaluate" / "report.json").read_text())
    test = json.loads((out / "prepare" / "cases.json").read_text())["test"]
    assert report["segmenter_miou"] == pytest.approx(sklearn_saved_miou(test, out / "evaluate" / "scores", 13), abs=1e-9)
    assert set(report["synthesis"]) == {"2D SPADE G(y)", "class-mean painter"}
    assert (out / "models" / "painter.json").is_file()


def test_threshold_sweep_is_msp_postprocessing(study_run):
    out, _, _ = study_run
    with np.load(sorted((out / "evaluate" / "scores").glob("*.npz"))[0]) as data:
        raw, msp = data["SynthCP (t=1)"], data["MSP"]  # t = 1: no pixel has p > 1, the raw 1 - cos map
        for t in (0.8, 0.9, 0.99, 0.999):
            expected = np.where(1.0 - msp <= t, raw, msp)  # p <= t keeps 1 - cos, p > t takes 1 - p
            np.testing.assert_allclose(data[f"SynthCP (t={t:g})"], expected, atol=1e-6)


def test_rerun_skips_finished_stages(study_run):
    out, data, _ = study_run
    assert run_study("streethazards", out, data=data, demo=True, extra=TINY) == {}


def test_bad_data_folder_is_a_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SynthCPInputError, match="StreetHazards folder"):
        run_study("streethazards", tmp_path / "out", data=tmp_path / "nothing", demo=True, extra=TINY)


def test_stage_runs_with_monai_bundle_command(study_run, tmp_path):
    _, data, _ = study_run
    cmd = stage_command(
        bundle_dir(STUDIES["streethazards"]),
        "prepare",
        {"dataset_dir": str(data), "output_dir": str(tmp_path), "image_size": [64, 32], "progress": False},
    )
    assert cmd[1:4] == ["-m", "monai.bundle", "run"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    done = json.loads((tmp_path / "prepare" / "done.json").read_text())
    assert done["num_train"] == 4 and done["num_test"] == 4
    assert done["settings"]["image_size"] == [64, 32]


def test_bad_pooled_max_bins_is_a_clear_error_and_the_next_run_redoes_evaluate(study_run):
    out, data, _ = study_run
    bad = {**TINY, "evaluate": {"pooled_max_bins": 8}}
    with pytest.raises(SynthCPInputError, match="pooled_max_bins must be an integer >= 512"):
        run_study("streethazards", out, data=data, demo=True, extra=bad)
    assert not (out / "evaluate" / "done.json").exists()  # a failed rerun is not done
    assert (out / "evaluate" / "report.md").is_file()  # nothing was written over
    assert set(run_study("streethazards", out, data=data, demo=True, extra=TINY)) == {"evaluate"}