"""Cityscapes reader + synthetic generator: layout, label tables, determinism and one-line input errors."""

from __future__ import annotations

import filecmp
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import relative_files
from PIL import Image

from synthcp2d.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAIN_IDS,
    check_cityscapes_folder,
    label_ids_to_train_ids,
    load_cityscapes_datalist,
    load_label_train_ids,
    read_label_ids,
    train_ids_to_color,
    train_ids_to_label_ids,
)
from synthcp2d.data.generator_io import SYNTHETIC_MARKER
from synthcp2d.data.synthetic_cityscapes import make_cityscapes_dataset
from synthcp3d.errors import SynthCPInputError

SIZE = (128, 64)


@pytest.fixture(scope="module")
def cs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cityscapes_dataset(
        tmp_path_factory.mktemp("cs"), cases=6, seed=7, size=SIZE, val_cases=2, progress=False
    )


@pytest.fixture()
def cs_copy(cs_root: Path, tmp_path: Path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(cs_root, tmp_path / "cityscapes"))


def test_train_id_table_is_the_official_one() -> None:
    expected = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
    assert {k: v for k, v in CITYSCAPES_TRAIN_IDS.items() if v != 255} == expected
    assert set(CITYSCAPES_TRAIN_IDS) == set(range(34))
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[18] == "bicycle"
    assert CITYSCAPES_CLASSES[10] == "sky" and CITYSCAPES_CLASSES[16] == "train"
    assert CITYSCAPES_PALETTE.shape == (19, 3) and tuple(CITYSCAPES_PALETTE[0]) == (128, 64, 128)


def test_train_id_round_trip_keeps_ignore() -> None:
    label_ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    train_ids = label_ids_to_train_ids(label_ids)
    assert train_ids.shape == label_ids.shape and train_ids.dtype == np.uint8
    assert set(np.unique(train_ids)) == set(range(19)) | {255}
    back = train_ids_to_label_ids(train_ids)
    np.testing.assert_array_equal(label_ids_to_train_ids(back), train_ids)
    assert (back[train_ids == 255] == 0).all()
    np.testing.assert_array_equal(back[train_ids != 255], label_ids[train_ids != 255])
    assert train_ids_to_color(np.array([[0, 255]])).tolist() == [[[128, 64, 128], [0, 0, 0]]]


def test_layout_and_datalist(cs_root: Path) -> None:
    train = load_cityscapes_datalist(cs_root, "train")
    val = load_cityscapes_datalist(cs_root, "val")
    assert len(train) == 6 and len(val) == 2
    assert train == sorted(train, key=lambda d: (d["city"], d["name"]))
    assert {d["city"] for d in train} == {"aachen", "bochum", "bremen"} and {d["city"] for d in val} <= {
        "frankfurt",
        "lindau",
        "munster",
    }
    for d in train + val:
        assert re.fullmatch(rf"{d['city']}_\d{{6}}_000019", d["name"])
        image, label = Path(d["image"]), Path(d["label"])
        assert image.name == f"{d['name']}_leftImg8bit.png" and image.parent.parent.parent.name == "leftImg8bit"
        assert label.name == f"{d['name']}_gtFine_labelIds.png" and label.parent.parent.parent.name == "gtFine"
        for suffix in ("color", "instanceIds"):
            assert (label.parent / f"{d['name']}_gtFine_{suffix}.png").is_file()
    assert load_cityscapes_datalist(cs_root, "val") == val  # deterministic


def test_images_and_labels_load(cs_root: Path) -> None:
    seen: set[int] = set()
    for d in load_cityscapes_datalist(cs_root, "train"):
        image = np.asarray(Image.open(d["image"]))
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8 and image.std() > 10
        label_ids = read_label_ids(d["label"])
        assert label_ids.shape == (SIZE[1], SIZE[0]) and label_ids.max() <= 33
        train_ids = load_label_train_ids(d["label"])
        assert set(np.unique(train_ids)) <= set(range(19)) | {255}
        np.testing.assert_array_equal(train_ids, label_ids_to_train_ids(label_ids))
        seen |= set(np.unique(train_ids).tolist())
        color = np.asarray(Image.open(d["label"].replace("labelIds", "color")))
        assert color.shape == (SIZE[1], SIZE[0], 4)
        road = label_ids == 7
        assert (color[road][:, :3] == (128, 64, 128)).all()
        inst = np.asarray(Image.open(d["label"].replace("labelIds", "instanceIds"))).astype(np.int64)
        np.testing.assert_array_equal(np.where(inst >= 1000, inst // 1000, inst), label_ids)
    assert seen == set(range(19)) | {255}, "every trainId class and some ignore pixels appear in 6 images"


def test_check_summary(cs_root: Path) -> None:
    summary = check_cityscapes_folder(cs_root)
    assert summary["splits"]["train"]["images"] == 6 and summary["splits"]["val"]["images"] == 2
    assert summary["image_sizes"] == [list(SIZE)]
    assert summary["classes_missing"] == [] and 0 < summary["ignore_fraction"] < 0.5
    shallow = check_cityscapes_folder(cs_root, deep=False)
    assert "classes_present" not in shallow and shallow["splits"] == summary["splits"]


def test_same_seed_same_bytes(cs_root: Path, tmp_path: Path) -> None:
    again = make_cityscapes_dataset(tmp_path / "a", cases=6, seed=7, size=SIZE, val_cases=2, progress=False)
    files = relative_files(cs_root)
    assert files == relative_files(again) and len(files) == 8 * 4 + 1
    match, mismatch, errors = filecmp.cmpfiles(cs_root, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    other = make_cityscapes_dataset(tmp_path / "b", cases=1, seed=8, size=SIZE, val_cases=1, progress=False)
    first = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert not filecmp.cmp(cs_root / first, other / first, shallow=False)


def test_regenerates_over_own_output_but_not_foreign_folder(tmp_path: Path) -> None:
    root = make_cityscapes_dataset(tmp_path, cases=2, seed=0, size=SIZE, val_cases=1, progress=False)
    root = make_cityscapes_dataset(tmp_path, cases=1, seed=0, size=SIZE, val_cases=1, progress=False)
    assert len(load_cityscapes_datalist(root, "train")) == 1 and (root / SYNTHETIC_MARKER).is_file()
    foreign = tmp_path / "real" / "cityscapes"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(SynthCPInputError, match="not made by this generator"):
        make_cityscapes_dataset(tmp_path / "real", cases=1, seed=0, size=SIZE, progress=False)
    assert (foreign / "keep.txt").read_text() == "precious"
    assert not [p for p in (tmp_path / "real").iterdir() if p.name.startswith(".")], "no temp folder left behind"


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"cases": 0}, "cases must be a positive"),
        ({"cases": 2, "seed": -1}, "seed must be"),
        ({"cases": 2, "size": (16, 8)}, "size must be"),
        ({"cases": 2, "val_cases": 0}, "val_cases must be"),
    ],
)
def test_generator_rejects_bad_arguments(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(SynthCPInputError, match=pattern):
        make_cityscapes_dataset(tmp_path, **{"seed": 0, "progress": False, **kwargs})


def test_error_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SynthCPInputError, match="does not exist"):
        check_cityscapes_folder(tmp_path / "nope")


@pytest.mark.parametrize("sub", ["leftImg8bit", "gtFine"])
def test_error_missing_subfolder(cs_copy: Path, sub: str) -> None:
    shutil.rmtree(cs_copy / sub)
    with pytest.raises(SynthCPInputError, match=f"has no {sub}/ folder"):
        load_cityscapes_datalist(cs_copy, "train")


def test_error_nested_root_is_pointed_out(cs_root: Path, tmp_path: Path) -> None:
    shutil.copytree(cs_root, tmp_path / "data" / "cityscapes")
    with pytest.raises(SynthCPInputError, match=r"found one in .*cityscapes, pass that folder"):
        check_cityscapes_folder(tmp_path / "data")


@pytest.mark.parametrize("sub", ["leftImg8bit", "gtFine"])
def test_error_pointing_at_leftimg8bit_itself(cs_root: Path, sub: str) -> None:
    with pytest.raises(SynthCPInputError, match="folder itself; pass its parent"):
        load_cityscapes_datalist(cs_root / sub, "train")


def test_error_renamed_leftimg8bit_folder_is_recognised(cs_copy: Path, tmp_path: Path) -> None:
    moved = Path(shutil.move(cs_copy / "leftImg8bit", tmp_path / "images"))
    with pytest.raises(SynthCPInputError, match="folder itself"):
        check_cityscapes_folder(moved)


def test_error_image_without_label(cs_copy: Path) -> None:
    label = Path(load_cityscapes_datalist(cs_copy, "train")[1]["label"])
    label.unlink()
    with pytest.raises(SynthCPInputError, match=rf"has no label: expected .*{label.name}"):
        load_cityscapes_datalist(cs_copy, "train")


def test_error_label_values_not_label_ids(cs_copy: Path) -> None:
    label = Path(load_cityscapes_datalist(cs_copy, "val")[0]["label"])
    arr = np.asarray(Image.open(label)).copy()
    arr[0, :3] = [200, 34, 255]
    Image.fromarray(arr).save(label)
    with pytest.raises(SynthCPInputError, match=r"values 34, 200, 255 that are not Cityscapes labelIds"):
        check_cityscapes_folder(cs_copy)
    with pytest.raises(SynthCPInputError, match="not Cityscapes labelIds"):
        load_label_train_ids(label)


def test_error_colour_image_given_as_label(cs_copy: Path) -> None:
    label = Path(load_cityscapes_datalist(cs_copy, "train")[0]["label"])
    shutil.copy(label.with_name(label.name.replace("labelIds", "color")), label)
    with pytest.raises(SynthCPInputError, match="has 4 channels"):
        check_cityscapes_folder(cs_copy)


def test_error_size_mismatch(cs_copy: Path) -> None:
    label = Path(load_cityscapes_datalist(cs_copy, "train")[2]["label"])
    Image.open(label).resize((64, 32), Image.NEAREST).save(label)
    with pytest.raises(SynthCPInputError, match=r"is 128x64 but its label .* is 64x32"):
        check_cityscapes_folder(cs_copy, deep=False)


def test_error_unknown_split_and_missing_split(cs_root: Path) -> None:
    with pytest.raises(SynthCPInputError, match="Unknown Cityscapes split 'validation'"):
        load_cityscapes_datalist(cs_root, "validation")
    with pytest.raises(SynthCPInputError, match="no leftImg8bit/test/ folder"):
        load_cityscapes_datalist(cs_root, "test")


def test_error_images_not_in_city_folders(cs_copy: Path) -> None:
    val = cs_copy / "leftImg8bit" / "val"
    for image in list(val.rglob("*.png")):
        shutil.move(image, val / image.name)
    with pytest.raises(SynthCPInputError, match="one folder per city"):
        load_cityscapes_datalist(cs_copy, "val")
