"""Tests of samadapt.data.dataset and samadapt.data.check: the dataset format, its writers and its checker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console

from helpers.rasters import UTM
from samadapt.data import (
    IGNORE_INDEX,
    SegDataset,
    check_dataset,
    format_report,
    make_splits,
    write_classes,
    write_sample,
    write_splits,
)
from samadapt.errors import InputError, InputFileError, OutputExistsError
from samadapt.imagery.read import from_array

TRANSFORM = Affine(0.5, 0.0, 740_000.0, 0.0, -0.75, 3_740_000.0)


def make_image(h: int, w: int, seed: int, *, georef: bool = True) -> object:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return from_array(pixels, crs=UTM if georef else None, transform=TRANSFORM if georef else None)


def make_mask(h: int, w: int, seed: int, n_classes: int = 3) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    mask = rng.integers(0, n_classes, size=(h, w), dtype=np.uint8)
    mask[0, :3] = IGNORE_INDEX
    return mask


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    """Six GeoTIFF samples (three classes, one unlabelled image), with classes.json and splits.json."""
    root = tmp_path / "clean"
    for i in range(6):
        mask = None if i == 5 else make_mask(12, 16, i)
        write_sample(root, f"s{i}", make_image(12, 16, i), mask)
    write_classes(root, {0: "background", 1: "crater", 2: "pit"})
    write_splits(root, {"train": ["s0", "s1", "s2"], "val": ["s3"], "test": ["s4", "s5"]})
    return root


@pytest.mark.parametrize("fmt", ["tif", "png"])
def test_write_sample_round_trip(tmp_path: Path, fmt: str) -> None:
    image, mask = make_image(20, 30, 0), make_mask(20, 30, 0)
    img_path, mask_path = write_sample(tmp_path, "a", image, mask, image_format=fmt)  # type: ignore[arg-type]
    assert img_path == tmp_path / "images" / f"a.{fmt}" and mask_path == tmp_path / "masks" / f"a.{fmt}"
    ds = SegDataset.open(tmp_path)
    back = ds.read_image("a")
    np.testing.assert_array_equal(back.pixels, image.pixels)  # type: ignore[attr-defined]
    got = ds.read_mask("a")
    assert got.dtype == np.uint8 and got.shape == (20, 30)
    np.testing.assert_array_equal(got, mask)
    if fmt == "tif":  # GeoTIFF keeps the georeferencing, for the image and for the mask
        assert back.crs == rasterio.crs.CRS.from_string(UTM) and back.transform == TRANSFORM
        with rasterio.open(mask_path) as src:
            assert src.crs.to_epsg() == 32616 and src.transform == TRANSFORM and src.nodata == IGNORE_INDEX
    else:
        assert back.transform is None


@pytest.mark.parametrize("fmt", ["tif", "png"])
def test_invalid_pixels_survive(tmp_path: Path, fmt: str) -> None:
    pixels = np.full((10, 12, 3), 0, dtype=np.uint8)  # black but valid pixels must stay valid
    valid = np.ones((10, 12), dtype=bool)
    valid[:, :4] = False
    image = from_array(pixels, valid=valid)
    write_sample(tmp_path, "a", image, None, image_format=fmt)  # type: ignore[arg-type]
    np.testing.assert_array_equal(SegDataset.open(tmp_path).read_image("a").valid, valid)


def test_bool_mask_is_class_one(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:5, 2:5] = True
    write_sample(tmp_path, "a", make_image(8, 8, 0, georef=False), mask, image_format="png")
    got = SegDataset.open(tmp_path).read_mask("a")
    assert set(np.unique(got)) == {0, 1}
    assert np.asarray(Image.open(tmp_path / "masks" / "a.png")).max() == 1


def test_mask_alone_takes_the_image_georeferencing(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", make_image(10, 10, 0), None)
    assert SegDataset.open(tmp_path).mask_path("a") is None
    write_sample(tmp_path, "a", None, make_mask(10, 10, 0))
    with rasterio.open(tmp_path / "masks" / "a.tif") as src:
        assert src.transform == TRANSFORM and src.crs.to_epsg() == 32616
    with pytest.raises(InputError, match=r"mask of 'b' is \(9, 10\).*image is \(10, 10\)"):
        write_sample(tmp_path, "b", make_image(10, 10, 0), make_mask(9, 10, 0))


def test_write_sample_refuses_to_overwrite(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", make_image(6, 6, 0), make_mask(6, 6, 0))
    with pytest.raises(OutputExistsError, match="a.tif exists"):
        write_sample(tmp_path, "a", make_image(6, 6, 1), None)
    with pytest.raises(OutputExistsError, match="a.tif exists for stem 'a'"):
        write_sample(tmp_path, "a", make_image(6, 6, 1), None, image_format="png")
    # overwriting in another format replaces the old file instead of leaving two with one stem
    write_sample(tmp_path, "a", make_image(6, 6, 1), make_mask(6, 6, 1), image_format="png", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["a.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a.png"]
    SegDataset.open(tmp_path)


@pytest.mark.parametrize(
    ("stem", "mask", "match"),
    [
        ("../x", None, "cannot name a file"),
        ("", None, "cannot name a file"),
        ("a", np.full((6, 6), 300, dtype=np.int32), "out of range"),
        ("a", np.zeros((6, 6), dtype=np.float32), "integer class ids"),
        ("a", np.zeros((6, 6, 2), dtype=np.uint8), r"\(H, W\)"),
    ],
)
def test_write_sample_rejects(tmp_path: Path, stem: str, mask: np.ndarray | None, match: str) -> None:
    with pytest.raises(InputError, match=match):
        write_sample(tmp_path, stem, make_image(6, 6, 0), mask)


def test_open_and_query(clean: Path) -> None:
    ds = SegDataset.open(clean)
    assert len(ds) == 6
    assert ds.stems() == [f"s{i}" for i in range(6)]
    assert ds.stems("train") == ["s0", "s1", "s2"] and ds.stems("test") == ["s4", "s5"]
    assert ds.classes == {0: "background", 1: "crater", 2: "pit"} and ds.num_classes == 3
    assert ds.mask_path("s5") is None and ds.mask_path("s0") == clean / "masks" / "s0.tif"
    assert ds.image_path("s1") == clean / "images" / "s1.tif"
    assert ds.read_image("s0", bands=(3, 2, 1)).pixels.shape == (12, 16, 3)
    with pytest.raises(InputError, match=r"unknown split 'validation'.*'train', 'val', 'test'"):
        ds.stems("validation")
    with pytest.raises(InputError, match="'s5' has no mask"):
        ds.read_mask("s5")
    with pytest.raises(InputError, match="no image with stem 'nope'"):
        ds.image_path("nope")


def test_defaults_without_metadata(tmp_path: Path) -> None:
    write_sample(tmp_path, "a", make_image(4, 4, 0), None)
    ds = SegDataset.open(tmp_path)
    assert ds.classes == {0: "background", 1: "object"} and ds.num_classes == 2
    assert ds.splits == {}
    with pytest.raises(InputError, match="splits.json does not exist"):
        ds.stems("train")


def test_open_errors(tmp_path: Path, clean: Path) -> None:
    for check in (SegDataset.open, check_dataset):  # a missing folder or a file is named as such
        with pytest.raises(InputFileError, match=r"dataset folder \S+missing does not exist; check the path: a"):
            check(tmp_path / "missing")
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(InputFileError, match=r"notes.txt is a file, not a dataset folder; give a folder instead"):
            check(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="has no images/ folder; a dataset folder holds images/"):
        SegDataset.open(tmp_path / "empty")

    (clean / "splits.json").write_text(json.dumps({"train": ["s0", "ghost"], "val": ["s1"]}))
    with pytest.raises(InputError, match=r"split 'train'.*'ghost'"):
        SegDataset.open(clean)
    (clean / "splits.json").write_text(json.dumps({"train": ["s0", "s1"], "val": ["s1"]}))
    with pytest.raises(InputError, match="'s1' is in both split 'train' and split 'val'"):
        SegDataset.open(clean)
    (clean / "splits.json").write_text("{not json")
    with pytest.raises(InputFileError, match="splits.json is not a readable JSON file"):
        SegDataset.open(clean)
    (clean / "splits.json").unlink()
    (clean / "classes.json").write_text(json.dumps({"0": "bg", "255": "void"}))
    with pytest.raises(InputError, match="class id 255 is not allowed"):
        SegDataset.open(clean)
    (clean / "classes.json").unlink()
    shutil.copy(clean / "images" / "s0.tif", clean / "images" / "s0.png")
    with pytest.raises(InputError, match="several files with stem 's0'"):
        SegDataset.open(clean)


def test_make_splits_reproducible_and_exhaustive() -> None:
    stems = [f"tile_{i:03d}" for i in range(50)]
    a = make_splits(stems, val=0.2, test=0.1, seed=3)
    assert a == make_splits(list(reversed(stems)), val=0.2, test=0.1, seed=3)  # input order does not matter
    assert a != make_splits(stems, val=0.2, test=0.1, seed=4)
    assert [len(a["train"]), len(a["val"]), len(a["test"])] == [35, 10, 5]
    assert sorted(a["train"] + a["val"] + a["test"]) == stems


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    val=st.floats(0, 0.6),
    test=st.floats(0, 0.39),
    seed=st.integers(0, 2**32 - 1),
)
def test_make_splits_every_stem_once(n: int, val: float, test: float, seed: int) -> None:
    stems = [f"s{i}" for i in range(n)]
    splits = make_splits(stems, val=val, test=test, seed=seed)
    together = splits["train"] + splits["val"] + splits["test"]
    assert sorted(together) == sorted(stems) and len(set(together)) == n
    if n:
        assert splits["train"]


def test_make_splits_rejects() -> None:
    with pytest.raises(InputError, match=r"val \+ test = 1 leaves nothing"):
        make_splits(["a", "b"], val=0.5, test=0.5)
    with pytest.raises(InputError, match="test=-0.1"):
        make_splits(["a"], test=-0.1)
    with pytest.raises(InputError, match="'a'.*more than once"):
        make_splits(["a", "a", "b"])


def test_write_splits_and_classes(clean: Path) -> None:
    ds = SegDataset.open(clean)
    with pytest.raises(OutputExistsError, match="splits.json exists"):
        write_splits(clean, make_splits(ds.stems()))
    write_splits(clean, make_splits(ds.stems(), seed=1), overwrite=True)
    assert SegDataset.open(clean).splits == make_splits(ds.stems(), seed=1)
    with pytest.raises(InputError, match="no image in"):
        write_splits(clean, {"train": ["zz"]}, overwrite=True)
    with pytest.raises(InputError, match="'s0' is in both split 'train' and split 'val'"):
        write_splits(clean, {"train": ["s0"], "val": ["s0"]}, overwrite=True)
    write_classes(clean, {1: "building", 4: "road"}, overwrite=True)
    assert json.loads((clean / "classes.json").read_text()) == {"0": "background", "1": "building", "4": "road"}
    assert SegDataset.open(clean).num_classes == 5
    with pytest.raises(InputError, match="class 2 has name ''"):
        write_classes(clean, {2: ""}, overwrite=True)


def test_check_clean_dataset(clean: Path) -> None:
    report = check_dataset(clean)
    assert report.ok, report.problems
    assert report.n_images == 6 and report.n_masks == 5
    assert [(p.stem, p.kind) for p in report.problems] == [("s5", "image-without-mask")]
    masks = [SegDataset.open(clean).read_mask(f"s{i}") for i in range(5)]
    for class_id in (0, 1, 2):
        assert report.class_pixels[class_id] == sum(int((m == class_id).sum()) for m in masks)
        assert report.class_images[class_id] == 5
    assert report.ignore_pixels == 5 * 3
    assert report.sizes == {(12, 16): 6}
    assert report.splits == {"train": 3, "val": 1, "test": 2}


def test_check_finds_each_problem(clean: Path) -> None:
    masks = clean / "masks"
    # size mismatch
    (masks / "s0.tif").unlink()
    write_sample(clean, "s0x", None, make_mask(10, 16, 0))
    (masks / "s0x.tif").rename(masks / "s0.tif")
    # unknown class id 7
    bad = make_mask(12, 16, 1)
    bad[5, 5] = 7
    write_sample(clean, "s1", None, bad, overwrite=True)
    # unreadable mask
    (masks / "s2.tif").write_bytes(b"this is not a tiff")
    # mask without image
    (clean / "images" / "s3.tif").unlink()
    # empty mask (background and ignore only)
    empty = np.zeros((12, 16), dtype=np.uint8)
    empty[0] = IGNORE_INDEX
    write_sample(clean, "s4", None, empty, overwrite=True)
    # a three-band mask
    write_sample(clean, "s6", make_image(12, 16, 6), None)
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(masks / "s6.png")
    # splits: a stem with no image, a stem in two splits
    (clean / "splits.json").write_text(json.dumps({"train": ["s0", "s1", "gone"], "val": ["s1"]}))

    report = check_dataset(clean)
    assert not report.ok
    found = {(p.stem, p.kind): p for p in report.problems}
    assert set(found) == {
        ("s0", "size-mismatch"),
        ("s1", "unknown-class"),
        ("s2", "unreadable-mask"),
        ("s3", "mask-without-image"),
        ("s4", "empty-mask"),
        ("s5", "image-without-mask"),
        ("s6", "multi-band-mask"),
        ("gone", "unknown-split-stem"),
        ("s1", "duplicate-split-stem"),
    }
    assert "s0.tif is 10 x 16 (rows x cols) but its image is 12 x 16" in found["s0", "size-mismatch"].message
    assert "class id(s) 7, unknown to classes.json" in found["s1", "unknown-class"].message
    assert "s2.tif does not open" in found["s2", "unreadable-mask"].message
    assert "has no image images/s3.*" in found["s3", "mask-without-image"].message
    assert "only background/ignore" in found["s4", "empty-mask"].message
    assert "has 3 bands" in found["s6", "multi-band-mask"].message
    assert {p.kind for p in report.warnings} == {"empty-mask", "image-without-mask"}

    text = _render(report)
    for kind in ("size-mismatch", "unknown-class", "unreadable-mask", "empty-mask", "crater"):
        assert kind in text


def test_check_num_classes_and_default_classes(clean: Path) -> None:
    report = check_dataset(clean, num_classes=2)  # masks hold 0, 1, 2
    assert {p.kind for p in report.errors} == {"unknown-class"}
    assert "unknown to classes.json below num_classes=2" in report.errors[0].message
    (clean / "classes.json").unlink()
    report = check_dataset(clean)
    assert "unknown to the default classes 0, 1 (classes.json is absent)" in report.errors[0].message
    assert check_dataset(clean, num_classes=3).ok
    (clean / "classes.json").write_text("[1, 2]")
    report = check_dataset(clean)
    assert [p.kind for p in report.errors][0] == "bad-metadata"
    with pytest.raises(InputError, match="num_classes=0"):
        check_dataset(clean, num_classes=0)
    with pytest.raises(InputFileError, match="no images/ folder"):
        check_dataset(clean / "masks")


def test_check_reports_unreadable_image(clean: Path) -> None:
    (clean / "images" / "s1.tif").write_bytes(b"II*\x00garbage")
    report = check_dataset(clean)
    assert [(p.stem, p.kind) for p in report.errors] == [("s1", "unreadable-image")]


def test_check_warns_on_a_shifted_mask(clean: Path) -> None:
    with rasterio.open(clean / "masks" / "s0.tif", "r+") as dst:
        dst.transform = TRANSFORM @ Affine.translation(3, 0)
    report = check_dataset(clean)
    assert report.ok  # a warning only: the mask may be right, but its georeferencing disagrees
    assert ("s0", "transform-mismatch") in {(p.stem, p.kind) for p in report.warnings}


def _render(report: object) -> str:
    console = Console(record=True, width=200)
    console.print(format_report(report))  # type: ignore[arg-type]
    return console.export_text()
