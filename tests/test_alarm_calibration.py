"""Calibration of the alarm's threshold: the order-statistic rule, its guarantee, intervals, storage in the bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from synthcp3d import cli
from synthcp3d.alarm import api
from synthcp3d.alarm.api import DSCAlarm
from synthcp3d.alarm.calibration import CALIBRATION_FILE, choose_threshold, read_calibration, write_calibration
from synthcp3d.data.geometry import affine_of
from synthcp3d.alarm.predictor import Prediction
from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.transforms import ct_preprocessing


def test_threshold_is_just_above_the_kth_bad_score() -> None:
    rng = np.random.default_rng(0)
    bad_scores = rng.uniform(0.0, 0.6, 19)
    good_scores = rng.uniform(0.4, 1.0, 30)
    predicted = np.concatenate([bad_scores, good_scores])
    true = np.concatenate([np.full(19, 0.2), np.full(30, 0.8)])
    result = choose_threshold(predicted, true, target_dsc=0.5, max_miss=0.1)
    k = math.ceil(20 * 0.9)
    assert result.rank == k == 18
    kth = np.sort(bad_scores)[k - 1]
    assert kth < result.threshold <= kth + 1e-4 + 1e-12
    assert result.threshold == pytest.approx(round(result.threshold, 4))
    flagged_bad = int((bad_scores < result.threshold).sum())
    assert flagged_bad == 18 and result.sensitivity.successes == 18 and result.sensitivity.trials == 19
    assert result.miss_bound == pytest.approx(1 - 18 / 20) and result.miss_bound <= 0.1
    ci = binomtest(18, 19).proportion_ci(confidence_level=0.95, method="exact")
    assert (result.sensitivity.ci_low, result.sensitivity.ci_high) == pytest.approx((ci.low, ci.high))
    assert result.specificity.trials == 30 and result.flag_rate.trials == 49
    assert result.specificity.successes == int((good_scores >= result.threshold).sum())
    assert "split-conformal" in result.method and "P(not flagged) <= 1 - 18/20" in result.guarantee


def test_guarantee_holds_by_simulation() -> None:
    """Over many calibration draws, a fresh bad case goes unflagged with probability <= max_miss."""
    rng = np.random.default_rng(1)
    n_bad, alpha, trials = 9, 0.2, 4000
    scores = rng.beta(2, 3, (trials, n_bad + 1))  # continuous: the bound 1 - k/(n+1) is then attained
    k = math.ceil((n_bad + 1) * (1 - alpha))
    thresholds = (np.floor(np.sort(scores[:, :n_bad], axis=1)[:, k - 1] * 1e4 + 1e-9) + 1) / 1e4
    for i in range(5):  # the vectorised rule is the function's rule
        assert choose_threshold(scores[i, :n_bad], np.zeros(n_bad), max_miss=alpha).threshold == pytest.approx(
            thresholds[i]
        )
    rate = float(np.mean(scores[:, n_bad] >= thresholds))
    bound = 1 - k / (n_bad + 1)
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert abs(rate - bound) < 4 * math.sqrt(bound * (1 - bound) / trials) + 1e-3


def test_undefined_and_missing_predictions() -> None:
    predicted = [0.1, 0.2, float("nan"), 0.9, 0.3, 0.95]
    true = [0.1, float("nan"), 0.0, 0.9, 0.2, float("nan")]
    result = choose_threshold(predicted, true, target_dsc=0.5, max_miss=0.25)
    assert (result.n_excluded, result.n_bad, result.n_good) == (2, 3, 1)
    # bad scores: 0.1, -inf (NaN prediction = always flagged), 0.3; k = ceil(4 * 0.75) = 3 -> just above 0.3
    assert result.threshold == pytest.approx(0.3001)
    assert result.cases[2]["flagged"] is True


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(max_miss=0.05), "needs at least 19"),
        (dict(max_miss=0.0), "strictly between"),
        (dict(target_dsc=1.5), "target-dsc"),
    ],
)
def test_refusals(kwargs: dict, needle: str) -> None:
    with pytest.raises(SynthCPInputError, match=needle):
        choose_threshold([0.1, 0.2, 0.3], [0.0, 0.1, 0.2], **kwargs)
    with pytest.raises(SynthCPInputError, match="only 0 truly bad"):
        choose_threshold([0.9], [0.9])


# ---------------------------------------------------------------- end to end with a stand-in predictor
class BrightnessPredictor:
    """Stand-in: tumour = voxels above 155 HU; predicted tumour DSC = a known function of the brightest voxel."""

    labels = {0: "background", 1: "pancreas", 2: "tumour"}
    info = {"model": {"name": "stand-in"}, "bundle": {"name": "test"}}

    def __init__(self) -> None:
        self.chain = ct_preprocessing((1.6, 1.6, 2.0), label_key=None, load=False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.chain({"image": image})["image"]

    def __call__(self, image: torch.Tensor, timer=None) -> Prediction:
        x = image[0].numpy()
        seg = np.where(x > 0.5, 2, 0).astype(np.uint8)
        score = float((x.max() + 1.0) / 2.0)
        dsc = {m: {"pancreas": None, "tumour": score} for m in ("synthcp", "vae_alarm", "ensemble")}
        return Prediction(seg, (x > 0.5).astype(np.float32), x, None, affine_of(image), dsc)


def labelled_set(folder: Path) -> tuple[Path, list[float]]:
    """4 bad cases (block too dark to segment, label elsewhere) and 4 good (bright block, label = block)."""
    folder.mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    rows, expected = ["image,label,case"], []
    for i, hu in enumerate([120, 125, 130, 135, 200, 210, 220, 230]):
        vol = np.full((24, 24, 12), 40.0, np.float32)
        vol[:2] = -1000.0
        vol[6:14, 6:14, 3:8] = hu
        label = np.zeros(vol.shape, np.uint8)
        label[6:14, 6:14, 3:8] = 2 if hu > 155 else 0
        if hu <= 155:
            label[14:20, 14:20, 3:8] = 2
        save_like(vol, affine, folder / f"img{i}.nii.gz")
        save_like(label, affine, folder / f"lab{i}.nii.gz")
        rows.append(f"img{i}.nii.gz,lab{i}.nii.gz,c{i}")
        expected.append(((min(hu, 240) + 100) / 340.0 * 2 - 1 + 1) / 2)
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv", expected


def test_calibrate_cli_stores_threshold_used_by_alarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: BrightnessPredictor())
    data, scores = labelled_set(tmp_path / "data")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    args = ["alarm", "calibrate", "--bundle", str(bundle), "--data", str(data), "--max-miss", "0.2", "--no-progress"]
    assert cli.main(args + ["--dry-run"]) == 0
    assert not (bundle / CALIBRATION_FILE).exists()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "threshold T =" in out and "sensitivity  1.000" in out and "specificity  1.000" in out
    stored = json.loads((bundle / CALIBRATION_FILE).read_text())
    assert (stored["n_bad"], stored["n_good"], stored["rank"]) == (4, 4, 4)
    assert max(scores[:4]) < stored["threshold"] <= max(scores[:4]) + 1e-4 + 1e-9
    assert (bundle / "models" / "alarm_calibration_cases.csv").read_text().count("\n") == 9
    alarm = DSCAlarm.from_bundle(bundle, device="cpu", progress=False)
    assert alarm.threshold == stored["threshold"] and alarm.threshold_source.startswith("calibration")
    assert DSCAlarm.from_bundle(bundle, device="cpu", threshold=0.7).threshold_source == "user"


def test_calibrate_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: BrightnessPredictor())
    data, _ = labelled_set(tmp_path / "data")
    assert cli.main(["alarm", "calibrate", "--bundle", str(tmp_path)]) == 2
    assert "needs --data" in capsys.readouterr().err
    status = cli.main(
        ["alarm", "calibrate", "--bundle", str(tmp_path), "--data", str(data), "--max-miss", "0.1", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "only 4 truly bad" in err and err.count("\n") == 1
    (tmp_path / "models").mkdir()
    (tmp_path / CALIBRATION_FILE).write_text("{broken")
    with pytest.raises(SynthCPInputError, match="unreadable"):
        read_calibration(tmp_path)


def test_write_read_round_trip(tmp_path: Path) -> None:
    result = choose_threshold([0.1, 0.2, 0.3, 0.4, 0.8], [0.1, 0.1, 0.1, 0.1, 0.9], max_miss=0.2)
    path = write_calibration(result, tmp_path)
    data = read_calibration(tmp_path)
    assert data["threshold"] == result.threshold and data["path"] == str(path)
    assert data["sensitivity"]["trials"] == 4


def test_a_calibration_belongs_to_its_flag_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrated for SynthCP: the alarm then flags on SynthCP; asking for another method needs its own threshold."""
    monkeypatch.setattr(api, "load_predictor", lambda bundle, device: BrightnessPredictor())
    data, _ = labelled_set(tmp_path / "data")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    args = ["alarm", "calibrate", "--bundle", str(bundle), "--data", str(data), "--max-miss", "0.2", "--no-progress",
            "--flag-method", "synthcp"]
    assert cli.main(args) == 0
    assert json.loads((bundle / CALIBRATION_FILE).read_text())["flag_method"] == "synthcp"
    assert DSCAlarm.from_bundle(bundle, device="cpu", progress=False).flag_method == "synthcp"
    with pytest.raises(SynthCPInputError, match="calibrated for flag method 'synthcp'"):
        DSCAlarm.from_bundle(bundle, device="cpu", flag_method="ensemble")
    other = DSCAlarm.from_bundle(bundle, device="cpu", flag_method="ensemble", threshold=0.4)
    assert (other.flag_method, other.threshold, other.threshold_source) == ("ensemble", 0.4, "user")
