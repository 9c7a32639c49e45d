"""StreetHazards reader + synthetic generator: layout, file value convention, anomalies only in test, errors."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import relative_files
from PIL import Image

from synthcp2d.data.streethazards import (
    ANOMALY_INDEX,
    STREETHAZARDS_CLASSES,
    STREETHAZARDS_NUM_KNOWN_CLASSES,
    STREETHAZARDS_PALETTE,
    check_streethazards_folder,
    load_streethazards_datalist,
    load_streethazards_label,
    streethazards_to_color,
)
from synthcp2d.data.synthetic_streethazards import make_streethazards_dataset
from synthcp3d.errors import SynthCPInputError

SIZE = (128, 64)


@pytest.fixture(scope="module")
def sh_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_streethazards_dataset(
        tmp_path_factory.mktemp("sh"), cases=4, seed=3, size=SIZE, progress=False, val_cases=2, test_cases=6
    )


@pytest.fixture()
def sh_copy(sh_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sh_root, tmp_path / "streethazards"))


def test_class_convention() -> None:
    assert len(STREETHAZARDS_CLASSES) == 14 and STREETHAZARDS_NUM_KNOWN_CLASSES == 13
    assert STREETHAZARDS_CLASSES[0] == "unlabeled" and STREETHAZARDS_CLASSES[ANOMALY_INDEX] == "anomaly"
    assert STREETHAZARDS_CLASSES[7] == "road" and STREETHAZARDS_CLASSES[10] == "car"
    assert STREETHAZARDS_PALETTE.shape == (14, 3) and tuple(STREETHAZARDS_PALETTE[ANOMALY_INDEX]) == (60, 250, 240)
    assert streethazards_to_color(np.array([[7]])).tolist() == [[[128, 64, 128]]]


def test_release_layout_and_odgt(sh_root: Path) -> None:
    assert sorted(p.name for p in (sh_root / "train" / "images").iterdir()) == ["training", "validation"]
    assert [p.name for p in (sh_root / "train" / "images" / "training").iterdir()] == ["t1-3"]
    assert [p.name for p in (sh_root / "train" / "images" / "validation").iterdir()] == ["t4"]
    assert sorted(p.name for p in (sh_root / "test" / "images" / "test").iterdir()) == ["t5", "t6"]
    for top, name, count in (("train", "train.odgt", 4), ("train", "validation.odgt", 2), ("test", "test.odgt", 6)):
        entries = json.loads((sh_root / top / name).read_text())
        assert len(entries) == count
        for e in entries:
            assert e["dbName"] == "StreetHazards" and (e["width"], e["height"]) == SIZE
            assert (sh_root / top / e["fpath_img"]).is_file() and (sh_root / top / e["fpath_segm"]).is_file()
            assert e["fpath_segm"] == e["fpath_img"].replace("images/", "annotations/", 1)


def test_datalist_with_and_without_odgt(sh_root: Path, sh_copy: Path) -> None:
    lists = {s: load_streethazards_datalist(sh_root, s) for s in ("train", "val", "test")}
    assert [len(v) for v in lists.values()] == [4, 2, 6]
    assert {d["town"] for d in lists["train"]} == {"t1-3"} and {d["town"] for d in lists["test"]} == {"t5", "t6"}
    assert [d["name"] for d in lists["train"]] == ["t1-3/0", "t1-3/1", "t1-3/2", "t1-3/3"]
    for odgt in ("train/train.odgt", "train/validation.odgt", "test/test.odgt"):
        (sh_copy / odgt).unlink()
    for split, items in lists.items():
        scanned = load_streethazards_datalist(sh_copy, split)
        assert [(d["name"], Path(d["image"]).name) for d in scanned] == [
            (d["name"], Path(d["image"]).name) for d in items
        ]


def test_labels_known_in_train_val_and_anomaly_only_in_test(sh_root: Path) -> None:
    known: set[int] = set()
    for split in ("train", "val"):
        for d in load_streethazards_datalist(sh_root, split):
            raw = np.asarray(Image.open(d["label"]))
            assert raw.shape == (SIZE[1], SIZE[0]) and raw.min() >= 1 and raw.max() <= 13, "files store index + 1"
            index = load_streethazards_label(d["label"], allow_anomaly=False)
            np.testing.assert_array_equal(index, raw - 1)
            image = np.asarray(Image.open(d["image"]))
            assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
            known |= set(np.unique(index).tolist())
    assert known == set(range(13)), "all 13 known classes, 'unlabeled' included, appear in train+val"
    with_anomaly = [
        bool((load_streethazards_label(d["label"]) == ANOMALY_INDEX).any())
        for d in load_streethazards_datalist(sh_root, "test")
    ]
    assert 0 < sum(with_anomaly) < len(with_anomaly), "most but not all test images hold an anomaly"
    summary = check_streethazards_folder(sh_root)
    assert summary["test_images_with_anomaly"] == sum(with_anomaly)
    assert 0 < summary["test_anomaly_fraction"] < 0.2
    assert summary["splits"]["val"] == {"images": 2, "towns": ["t4"]} and summary["image_sizes"] == [list(SIZE)]


def test_anomalies_are_more_saturated_than_known_classes(sh_root: Path) -> None:
    """Anomalies are painted with saturated hues and patterns that the street classes do not use."""

    def saturation(pixels: np.ndarray) -> float:
        return float((pixels.max(1) - pixels.min(1)).mean())

    known, anomalous = [], []
    for d in load_streethazards_datalist(sh_root, "test"):
        image, index = np.asarray(Image.open(d["image"])).astype(float), load_streethazards_label(d["label"])
        known.append(image[index != ANOMALY_INDEX])
        anomalous.append(image[index == ANOMALY_INDEX])
    assert saturation(np.concatenate(anomalous)) > 2 * saturation(np.concatenate(known))


def test_same_seed_same_bytes(sh_root: Path, tmp_path: Path) -> None:
    again = make_streethazards_dataset(tmp_path, cases=4, seed=3, size=SIZE, progress=False, val_cases=2, test_cases=6)
    files = relative_files(sh_root)
    assert files == relative_files(again) and len(files) == 2 * 12 + 3 + 1
    _, mismatch, errors = filecmp.cmpfiles(sh_root, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors


def test_error_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SynthCPInputError, match="does not exist"):
        load_streethazards_datalist(tmp_path / "missing", "train")


def test_error_neither_train_nor_test(tmp_path: Path, sh_root: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthCPInputError, match="has neither train/ nor test/"):
        check_streethazards_folder(tmp_path / "empty")
    shutil.copytree(sh_root, tmp_path / "data" / "streethazards")
    with pytest.raises(SynthCPInputError, match=r"found them in .*streethazards, pass that folder"):
        check_streethazards_folder(tmp_path / "data")


def test_error_pointing_at_train_folder(sh_root: Path) -> None:
    with pytest.raises(SynthCPInputError, match="train/ or test/ folder itself; pass its parent"):
        load_streethazards_datalist(sh_root / "train", "train")


def test_error_missing_split_folder(sh_copy: Path) -> None:
    shutil.rmtree(sh_copy / "train" / "images" / "validation")
    with pytest.raises(SynthCPInputError, match=r"no train/images/validation/ folder for split 'val'"):
        load_streethazards_datalist(sh_copy, "val")


@pytest.mark.parametrize("use_odgt", [True, False])
def test_error_image_without_annotation(sh_copy: Path, use_odgt: bool) -> None:
    if not use_odgt:
        (sh_copy / "test" / "test.odgt").unlink()
    label = Path(load_streethazards_datalist(sh_copy, "test")[3]["label"])
    label.unlink()
    with pytest.raises(SynthCPInputError, match=r"has no annotation: expected .*annotations/test/t.*\.png"):
        load_streethazards_datalist(sh_copy, "test")


def test_error_odgt_lists_missing_image(sh_copy: Path) -> None:
    Path(load_streethazards_datalist(sh_copy, "train")[0]["image"]).unlink()
    with pytest.raises(SynthCPInputError, match=r"train.odgt lists .*0.png, which does not exist"):
        load_streethazards_datalist(sh_copy, "train")


@pytest.mark.parametrize("value", [0, 15])
def test_error_annotation_value_outside_convention(sh_copy: Path, value: int) -> None:
    label = Path(load_streethazards_datalist(sh_copy, "val")[0]["label"])
    raw = np.asarray(Image.open(label)).copy()
    raw[5, 5] = value
    Image.fromarray(raw).save(label)
    with pytest.raises(SynthCPInputError, match=rf"values {value} outside the file convention 1-14"):
        check_streethazards_folder(sh_copy)


def test_error_anomaly_in_training_split(sh_copy: Path) -> None:
    label = Path(load_streethazards_datalist(sh_copy, "train")[1]["label"])
    raw = np.asarray(Image.open(label)).copy()
    raw[:4, :4] = ANOMALY_INDEX + 1
    Image.fromarray(raw).save(label)
    with pytest.raises(SynthCPInputError, match="contains anomaly pixels .* only the test split may hold"):
        check_streethazards_folder(sh_copy)
    assert (load_streethazards_label(label) == ANOMALY_INDEX).sum() == 16  # allowed when reading test data


def test_error_rgb_annotation_and_size_mismatch(sh_copy: Path) -> None:
    items = load_streethazards_datalist(sh_copy, "test")
    rgb = Path(items[0]["label"])
    Image.open(rgb).convert("RGB").save(rgb)
    with pytest.raises(SynthCPInputError, match="has 3 channels"):
        load_streethazards_label(rgb)
    small = Path(items[1]["label"])
    Image.open(small).resize((64, 32), Image.NEAREST).save(small)
    with pytest.raises(SynthCPInputError, match=r"is 128x64 but its annotation .* is 64x32"):
        check_streethazards_folder(sh_copy, splits=["test"], deep=False)


def test_error_unknown_split(sh_root: Path) -> None:
    with pytest.raises(SynthCPInputError, match="Unknown StreetHazards split 'validation'"):
        load_streethazards_datalist(sh_root, "validation")


def test_generator_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SynthCPInputError, match="test_cases must be"):
        make_streethazards_dataset(tmp_path, cases=2, seed=0, progress=False, test_cases=0)
    with pytest.raises(SynthCPInputError, match="seed must be"):
        make_streethazards_dataset(tmp_path, cases=2, seed=1.5, progress=False)  # type: ignore[arg-type]
