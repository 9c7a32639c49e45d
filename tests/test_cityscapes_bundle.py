"""The Cityscapes bundle end to end on a tiny synthetic data set: every stage once (module fixture), then Table 1
is recomputed independently from the saved per-image scores with scikit-learn / scipy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers import TINY_CITYSCAPES, sklearn_saved_miou

from synthcp2d.data import make_cityscapes_dataset
from synthcp3d.engines.crossval import load_prediction
from synthcp3d.report import read_per_case_csv
from synthcp3d.study_cli import STUDIES, run_study

pytestmark = pytest.mark.slow  # end-to-end: not in `make test-fast`


SYNTHCP = [f"SynthCP-{mode}{x_hat}" for mode in ("separate", "joint")
           for x_hat in ("", ", x̂ = class-mean painter", ", x̂ = blank")]
PIXEL = ["MSP", "MC-Dropout", "TCP", "Direct Prediction", *SYNTHCP]
IMAGE = ["Predicted area (no image)", "MC-Dropout", "MC-Dropout (full linear map)", "VAE alarm", "Pairwise IoU (fold ensemble)",
         "Direct Prediction", *SYNTHCP]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    data = make_cityscapes_dataset(root / "data", cases=6, seed=0, size=(64, 32), val_cases=3, progress=False)
    out = root / "out"
    timings = run_study("cityscapes", out, data=data, demo=True, extra=TINY_CITYSCAPES)
    return out, data, timings


def test_every_stage_ran_and_table_printed(study_run):
    out, _, timings = study_run
    assert list(timings) == list(STUDIES["cityscapes"].stages)
    report = (out / "evaluate" / "report.md").read_text()
    miou = json.loads((out / "evaluate" / "report.json").read_text())["segmenter_miou"]
    for key, run in (("fcn8", "fcn8"), ("deeplabv2", "deeplabv2"),
                     ("fcn8_judged_by_deeplabv2", "fcn8 masks judged by comparators trained on deeplabv2 (cross-model)")):
        title = f"{run} (segmenter val mIoU {miou[key]:.3f})"
        assert f"## {title} — image level" in report
        assert f"## {title} — pixel level, reduction `pooled`" in report
        assert f"## {title} — pixel level, reduction `per_image`" in report
        assert f"## {key}: does the comparator use x̂? Mean |change| of SynthCP-joint's predicted quality" in report
    for method in PIXEL:
        assert f"| {method} |" in report
    assert "## Synthesis quality: G(ground truth) vs the real image" in report
    assert "| 2D SPADE G(y) |" in report and "| class-mean painter |" in report
    assert "| VAE alarm |" in report and "| Pairwise IoU (fold ensemble) |" in report
    assert (out / "evaluate" / "fig5.png").stat().st_size > 1000
    pixel = json.loads((out / "evaluate" / "report.json").read_text())["pixel"]
    assert set(pixel["fcn8_judged_by_deeplabv2"]["pooled"]) == {"Direct Prediction", *SYNTHCP}


def test_folds_are_contiguous_blocks_of_cities(study_run):
    out, _, _ = study_run
    meta = json.loads((out / "prepare" / "cases.json").read_text())
    city = {r["case"]: r["city"] for r in meta["train"]}
    fold_cities = [{city[c] for c in fold} for fold in meta["folds"]]
    assert len(meta["folds"]) == 2 and sorted(c for f in meta["folds"] for c in f) == sorted(city)
    assert not fold_cities[0] & fold_cities[1]  # a city never spans two folds
    manifest = json.loads((out / "crossval" / "fcn8" / "manifest.json").read_text())
    assert sorted(e["case"] for e in manifest) == sorted(city)  # every training image predicted once


def test_pixel_table_recomputed_with_sklearn(study_run):
    out, _, _ = study_run
    pixel = json.loads((out / "evaluate" / "report.json").read_text())["pixel"]["fcn8"]
    files = sorted((out / "evaluate" / "fcn8" / "scores").glob("*.npz"))
    assert len(files) == 3
    for method in PIXEL:
        errors, scores = [], []
        for path in files:
            with np.load(path) as data:
                keep = ~data["ignore"].ravel()
                errors.append(data["error"].ravel()[keep])
                scores.append(data[method].ravel()[keep].astype(np.float64))
        error, score = np.concatenate(errors), np.concatenate(scores)
        expected = {
            "AUPR_Error": 100 * average_precision_score(error, score),
            "AUPR_Success": 100 * average_precision_score(~error, -score),
            "AUROC": 100 * roc_auc_score(error, score),
        }
        assert pixel["pooled"][method]["precision_bits"] == 23  # every distinct score kept: the exact ranking
        for key, value in expected.items():
            assert pixel["pooled"][method][key] == pytest.approx(value, abs=1e-6), (method, key)


def test_area_baseline_features_recomputed_from_the_saved_predictions(study_run):
    out, _, _ = study_run
    records = json.loads((out / "crossval" / "fcn8" / "cases.json").read_text())
    for r in records.values():
        pred = load_prediction(r["pred"])
        counts = np.array([(pred == k).sum() for k in range(len(r["area_feature"]))])
        expected = np.where(counts > 0, np.log(np.maximum(counts, 1) / pred.size), np.nan)
        np.testing.assert_allclose(r["area_feature"], expected, rtol=1e-6, equal_nan=True)
    assert (out / "models" / "area_fcn8.json").is_file()


def test_image_table_recomputed_with_scipy(study_run):
    out, _, _ = study_run
    image = json.loads((out / "evaluate" / "report.json").read_text())["image"]["fcn8"]["mean over classes"]
    _, true, pred = read_per_case_csv(out / "evaluate" / "fcn8" / "per_case.csv")
    for method in IMAGE:
        mae, std, pc = [], [], []
        for cls, t in true.items():
            p = pred[method][cls]
            defined = ~np.isnan(t)
            if not defined.any():
                continue
            diff = np.abs(p[defined] - t[defined])
            mae.append(100 * diff.mean())
            std.append(100 * diff.std())
            x, y = p[defined], t[defined]
            if x.size >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                pc.append(100 * stats.pearsonr(x, y).statistic)
        assert image[method]["MAE"] == pytest.approx(np.mean(mae), abs=1e-6)
        assert image[method]["STD"] == pytest.approx(np.mean(std), abs=1e-6)
        if pc:
            assert image[method]["PC"] == pytest.approx(np.mean(pc), abs=1e-6)


def test_segmenter_miou_and_painter_synthesis_recomputed_with_numpy(study_run):
    """The header's mIoU from the saved predictions and the cached labels with scikit-learn (pooled over the val
    images), and the painter's synthesis-quality row recomputed with numpy from painter.json (same seeds, so the
    same noisy images)."""
    import torch

    from synthcp2d.data.cityscapes import CITYSCAPES_CLASSES
    from synthcp2d.studies.common import image_tensor, load_cached
    from synthcp3d.scoring.synthesis import ClassMeanPainter

    out, _, _ = study_run
    report = json.loads((out / "evaluate" / "report.json").read_text())
    val = json.loads((out / "prepare" / "cases.json").read_text())["val"]
    expected = sklearn_saved_miou(val, out / "evaluate" / "fcn8" / "scores", ignore=255)
    assert report["segmenter_miou"]["fcn8"] == pytest.approx(expected, abs=1e-9)
    painter = ClassMeanPainter.load(out / "models" / "painter.json")
    assert painter.mean.shape == (19, 3)
    per_class = {c: [] for c in CITYSCAPES_CLASSES}
    for k, record in enumerate(val):
        case = load_cached(record["cache"])
        x = image_tensor(case["image"]).numpy()
        label = case["label"][0].astype(np.int64)
        painted = painter(torch.as_tensor(label)[None], seed=0 + k, ignore_index=255)[0].numpy()
        for c, name in enumerate(CITYSCAPES_CLASSES):
            inside = label == c
            if inside.any():
                per_class[name].append(127.5 * np.abs(painted[:, inside].mean(1) - x[:, inside].mean(1)).mean())
    row = report["synthesis"]["class-mean painter"]
    for name, values in per_class.items():
        if values:
            assert row[f"mean_error/{name}"] == pytest.approx(np.mean(values), rel=1e-4, abs=1e-3), name
    defined = [np.mean(v) for v in per_class.values() if v]
    assert row["mean_error/mean over classes"] == pytest.approx(np.mean(defined), rel=1e-4)
    g = report["synthesis"]["2D SPADE G(y)"]
    assert -1.0 <= g["ssim"] <= 1.0
    gap = g["mean_error_gap/mean over classes"]  # G's figure minus the painter's, with its bootstrap interval
    assert gap == pytest.approx(g["mean_error/mean over classes"] - row["mean_error/mean over classes"], rel=1e-6)
    assert g["mean_error_gap_low/mean over classes"] <= gap <= g["mean_error_gap_high/mean over classes"]


def test_every_kept_network_loads_from_networks_json_alone(study_run):
    """Each ``models/<name>.pt`` of the run, ConfidNet heads included, has its networks.json spec: the core's loader
    rebuilds it without the bundle config and its weights fit."""
    from synthcp2d.studies.cityscapes.study import CityscapesStudy
    from synthcp3d.workflows.trained import load_network

    out, data, _ = study_run
    study = CityscapesStudy(dataset_dir=str(data), output_dir=str(out))
    specs = json.loads((out / "models" / "networks.json").read_text())
    kept = sorted(p.stem for p in (out / "models").glob("*.pt"))
    assert sorted(specs) == kept and {"confidnet_fcn8", "confidnet_deeplabv2"} <= set(kept)
    keys = {"segmenter": "segmenter", "comparator": "comparator", "confidnet": "confidnet", "generator": "generator",
            "mask": "vae"}
    for name in kept:
        net = load_network(study, name, keys[name.split("_")[0]], "any")
        assert not net.training


def test_rerun_skips_finished_stages(study_run):
    out, data, _ = study_run
    assert run_study("cityscapes", out, data=data, demo=True, extra=TINY_CITYSCAPES) == {}


def test_cityscapes_vae_input_fills_ignore_with_the_nearest_label():
    """The VAE's training masks have no "ignore" channel: ignore pixels take the nearest labelled pixel's class."""
    from types import SimpleNamespace

    import torch

    from synthcp2d.studies.cityscapes.study import IGNORE, vae_input

    study = SimpleNamespace(vae_shape=(4, 6), num_classes=3)
    label = torch.tensor([[[0, 0, IGNORE, IGNORE, 2, 2]] * 4])  # (1, 4, 6): ignore between road (0) and class 2
    onehot = vae_input(label, study)
    assert onehot.shape == (1, 3, 4, 6) and torch.equal(onehot.sum(1), torch.ones(1, 4, 6))
    assert onehot.argmax(1)[0, 0].tolist() == [0, 0, 0, 2, 2, 2]
    assert vae_input(torch.full((1, 4, 6), IGNORE), study).argmax(1).eq(0).all()


def test_synthesis_memorisation_benchmark_matches_the_report(study_run):
    """benchmarks/synthesis_memorisation.py measures the held-out images as the report does, and the training ones."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthesis_memorisation import GAP, MEAN, measure

    out, _, _ = study_run
    kind, rows, per_class = measure(out, max_train=2)
    report = json.loads((out / "evaluate" / "report.json").read_text())["synthesis"]
    assert kind == "cityscapes" and set(rows) == {"train", "val"}
    for name in report:
        assert rows["val"][name][MEAN] == pytest.approx(report[name][MEAN], rel=1e-6)
    assert rows["val"]["2D SPADE G(y)"][GAP] == pytest.approx(report["2D SPADE G(y)"][GAP], rel=1e-6)
    assert np.isfinite(rows["train"]["class-mean painter"][MEAN])
    gaps = [v for v in per_class.values() if np.isfinite(v)]
    assert gaps and np.mean(gaps) == pytest.approx(rows["val"]["2D SPADE G(y)"][GAP], rel=1e-6)
