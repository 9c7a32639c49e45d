"""K-fold splits and cross-validated predictions: every case predicted once, by a model that never trained on it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from synthcp3d.engines.crossval import (
    load_manifest,
    load_prediction,
    load_probabilities,
    make_folds,
    run_crossval,
    save_prediction,
    save_probabilities,
)
from synthcp3d.errors import SynthCPInputError

IDS = [f"case{i:02d}" for i in range(11)]


def _is_partition(folds: list[list[str]], ids: list[str]) -> bool:
    flat = [c for f in folds for c in f]
    return len(flat) == len(set(flat)) and set(flat) == set(ids)


def test_make_folds_seeded_partition() -> None:
    folds = make_folds(IDS, k=4, seed=0)
    assert len(folds) == 4 and _is_partition(folds, IDS)
    assert sorted(len(f) for f in folds) == [2, 3, 3, 3]
    assert make_folds(IDS, k=4, seed=0) == folds
    assert make_folds(IDS, k=4, seed=1) != folds
    assert make_folds(IDS, k=4, contiguous=True) == [IDS[0:3], IDS[3:6], IDS[6:9], IDS[9:11]]


def test_make_folds_groups_never_span_folds() -> None:
    cities = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "d", "e"]
    for contiguous in (False, True):
        folds = make_folds(IDS, k=3, seed=2, groups=cities, contiguous=contiguous)
        assert _is_partition(folds, IDS)
        fold_of_city: dict[str, set[int]] = {}
        for i, fold in enumerate(folds):
            for case in fold:
                fold_of_city.setdefault(cities[IDS.index(case)], set()).add(i)
        assert all(len(v) == 1 for v in fold_of_city.values())
    # contiguous: consecutive cities a+b | c | d+e (sizes 5, 4, 2 are the closest cut to 11/3 per fold)
    folds = make_folds(IDS, k=3, groups=cities, contiguous=True)
    assert [sorted({cities[IDS.index(c)] for c in f}) for f in folds] == [["a", "b"], ["c"], ["d", "e"]]


def test_make_folds_rejects_bad_input() -> None:
    with pytest.raises(SynthCPInputError, match="unique"):
        make_folds(["a", "b", "a"], k=2)
    with pytest.raises(SynthCPInputError, match="k=5"):
        make_folds(IDS, k=5, groups=["x", "y", "z"] * 3 + ["x", "y"])
    with pytest.raises(SynthCPInputError, match="file"):
        make_folds(["ok", "sub/dir"], k=2)
    with pytest.raises(SynthCPInputError, match="group labels"):
        make_folds(IDS, k=2, groups=["a"])


class _Recorder:
    """Fake train/predict: the 'model' is the list of its training cases; predictions carry the case number."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.trained: list[list[str]] = []
        self.predicted: list[tuple[str, tuple[str, ...]]] = []
        self.fail_on = fail_on

    def train(self, train_cases: list[dict], fold_dir: Path) -> tuple[str, ...]:
        ids = tuple(c["case"] for c in train_cases)
        self.trained.append(list(ids))
        (fold_dir / "model.json").write_text(json.dumps(ids))
        return ids

    def predict(self, model: tuple[str, ...], case: dict) -> dict:
        if case["case"] == self.fail_on:
            raise RuntimeError("killed")
        self.predicted.append((case["case"], model))
        n = int(case["case"][4:])
        pred = np.full((1, 4, 5), n % 3, dtype=np.int64)
        prob = np.random.default_rng(n).dirichlet(np.ones(3), size=(4, 5)).transpose(2, 0, 1)
        return {"pred": pred, "prob": prob, "record": {"n": n, "trained_on": len(model or ())}}


def _cases() -> list[dict]:
    return [{"case": c, "image": f"/data/{c}_img.nii.gz", "label": f"/data/{c}_seg.nii.gz"} for c in IDS]


def test_run_crossval_predicts_each_case_once_out_of_fold(tmp_path: Path) -> None:
    rec = _Recorder()
    manifest = run_crossval(
        _cases(), 4, tmp_path, rec.train, rec.predict, seed=0, prob_format="float16", progress=False
    )
    assert Counter(c for c, _ in rec.predicted) == Counter(IDS)  # each case exactly once
    assert all(case not in model for case, model in rec.predicted)  # never by a model that trained on it

    split = json.loads((tmp_path / "folds.json").read_text())
    for held, train in zip(split["folds"], split["train"]):
        assert not set(held) & set(train) and set(held) | set(train) == set(IDS)
    assert [e["case"] for e in manifest] == IDS
    entry = manifest[4]
    assert entry["fold"] == next(i for i, f in enumerate(split["folds"]) if "case04" in f)
    assert entry["image"] == "/data/case04_img.nii.gz" and entry["pred"] == "predictions/case04_pred.npy"
    assert entry["record"] == {"n": 4, "trained_on": len(split["train"][entry["fold"]])}  # kept with the prediction
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest

    loaded = load_manifest(tmp_path)
    assert Path(loaded[4]["pred"]).is_absolute()
    assert np.array_equal(load_prediction(loaded[4]["pred"]), np.full((4, 5), 1))
    prob = load_probabilities(loaded[4]["prob"])
    expected = rec.predict(None, {"case": "case04"})["prob"]
    assert prob.shape == (3, 4, 5) and np.allclose(prob, expected, atol=1e-3)


def test_run_crossval_resumes_after_a_crash(tmp_path: Path) -> None:
    folds = make_folds(IDS, k=3, seed=0)
    victim = folds[1][1]  # second case of fold 1: fold 0 and one case of fold 1 are done before the crash
    first = _Recorder(fail_on=victim)
    with pytest.raises(RuntimeError, match="killed"):
        run_crossval(_cases(), 3, tmp_path, first.train, first.predict, folds=folds, progress=False)
    assert (tmp_path / "fold_0" / "fold.json").is_file() and not (tmp_path / "fold_1" / "fold.json").exists()
    assert not (tmp_path / "manifest.json").exists()

    second = _Recorder()
    run_crossval(_cases(), 3, tmp_path, second.train, second.predict, folds=folds, progress=False)
    assert len(second.trained) == 2  # fold 0 is not retrained
    assert folds[1][0] not in [c for c, _ in second.predicted]  # its prediction exists already
    assert Counter(c for c, _ in first.predicted + second.predicted) == Counter(IDS)
    manifest = load_manifest(tmp_path)
    assert len(manifest) == len(IDS)
    assert [e["record"]["n"] for e in manifest] == list(range(len(IDS)))  # also those predicted before the crash

    with pytest.raises(SynthCPInputError, match="different fold split"):
        run_crossval(_cases(), 3, tmp_path, second.train, second.predict, seed=99, progress=False)


def test_restart_redoes_every_fold_and_an_interrupted_restart_keeps_nothing_old(tmp_path: Path) -> None:
    """A forced or stale stage restarts: every fold is trained and predicted again, on a new split if it changed, and
    a restart that crashes leaves no old fold or prediction for the next (resuming) run to take as finished."""
    folds = make_folds(IDS, k=3, seed=0)
    run_crossval(_cases(), 3, tmp_path, _Recorder().train, _Recorder().predict, folds=folds, progress=False)
    (tmp_path / "fold_2" / "stale_checkpoint.pt").write_text("old")
    crashing = _Recorder(fail_on=folds[1][1])
    with pytest.raises(RuntimeError, match="killed"):
        run_crossval(_cases(), 3, tmp_path, crashing.train, crashing.predict, folds=folds, progress=False, restart=True)
    assert not (tmp_path / "fold_2").exists() and not (tmp_path / "manifest.json").exists()
    assert not (tmp_path / "predictions" / f"{folds[2][0]}_pred.npy").exists()  # fold 2 not reached: nothing old
    resumed = _Recorder()
    run_crossval(_cases(), 3, tmp_path, resumed.train, resumed.predict, folds=folds, progress=False)
    assert len(crashing.trained) == 2 and len(resumed.trained) == 2  # folds 0-1, then 1-2: nothing skipped as old
    assert Counter(c for c, _ in crashing.predicted + resumed.predicted) == Counter(IDS)
    # a new split replaces the saved one on a restart (without, it is refused)
    other = make_folds(IDS, k=2, seed=5)
    with pytest.raises(SynthCPInputError, match="different fold split"):
        run_crossval(_cases(), 2, tmp_path, resumed.train, resumed.predict, folds=other, progress=False)
    again = _Recorder()
    run_crossval(_cases(), 2, tmp_path, again.train, again.predict, folds=other, progress=False, restart=True)
    assert len(again.trained) == 2 and sorted(p.name for p in tmp_path.glob("fold_*")) == ["fold_0", "fold_1"]
    assert len(load_manifest(tmp_path)) == len(IDS)


def test_prediction_formats_roundtrip(tmp_path: Path) -> None:
    vol = np.random.default_rng(0).integers(0, 3, size=(6, 5, 4))
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    path = save_prediction(vol[None], tmp_path / "a_pred.nii.gz", affine=affine)
    assert np.array_equal(load_prediction(path), vol)
    import nibabel as nib

    assert np.allclose(nib.load(str(path)).affine, affine)
    path = save_prediction(vol[..., 0], tmp_path / "b_pred.png")
    assert np.array_equal(load_prediction(path), vol[..., 0])
    with pytest.raises(SynthCPInputError, match="non-integer"):
        save_prediction(np.full((3, 3), 0.5), tmp_path / "c_pred.npy")

    prob = np.random.default_rng(1).dirichlet(np.ones(5), size=(4, 4)).transpose(2, 0, 1)
    top = load_probabilities(save_probabilities(prob, tmp_path / "p.npz", "topk", top_k=2))
    order = np.argsort(-prob, axis=0)
    kept = np.take_along_axis(prob, order[:2], axis=0)
    assert np.allclose(np.take_along_axis(top, order[:2], axis=0), kept, atol=1e-3)
    assert np.all(np.take_along_axis(top, order[2:], axis=0) == 0)


def test_prediction_files_from_bf16_tensors_and_bad_inputs(tmp_path: Path) -> None:
    import torch

    label = torch.randint(0, 4, (1, 5, 6))
    path = save_prediction(label.bfloat16(), tmp_path / "a_pred.npy")  # used to fail in Tensor.numpy()
    assert np.array_equal(load_prediction(path), label[0].numpy()) and load_prediction(path).dtype == np.uint8
    prob = torch.softmax(torch.randn(4, 5, 6), 0).bfloat16()
    assert np.allclose(load_probabilities(save_probabilities(prob, tmp_path / "p.npz")), prob.float(), atol=1e-2)
    many = np.arange(300).reshape(20, 15)
    assert load_prediction(save_prediction(many, tmp_path / "m_pred.npy")).dtype == np.int16
    with pytest.raises(SynthCPInputError, match="above the int16 range"):
        save_prediction(np.full((2, 2), 40000), tmp_path / "b_pred.npy")  # would wrap around to negative
    with pytest.raises(SynthCPInputError, match="at most 256 classes"):
        save_prediction(many, tmp_path / "c_pred.png")
    with pytest.raises(SynthCPInputError, match="unknown prediction format"):
        save_prediction(label, tmp_path / "d_pred.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_pred.npy", "m_pred.npy", "p.npz"]
