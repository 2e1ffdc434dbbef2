"""YOLO label folders and Roboflow exports read as they are: boxes and polygons, splits, classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import run_cli
from samadapt.data.check import check_dataset
from samadapt.data.dataset import SegDataset
from samadapt.data.yolo import parse_yolo_file, yolo_mask
from samadapt.errors import InputError

BOX = "0 0.3 0.3 0.2 0.2\n"  # class 0: pixels 13..25 of a 64 x 64 image
POLYGON = "1 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n"  # class 1: a square, pixel centres 32.5..57.5 inside


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype("uint8")).save(path)


def _roboflow(root: Path, *, names: bool = True) -> Path:
    """A Roboflow YOLO export: data.yaml beside train/, valid/, test/ (images/ + labels/ each)."""
    for n, (folder, count) in enumerate((("train", 4), ("valid", 1), ("test", 1))):
        for i in range(count):
            stem = f"{folder}_{i}_jpg.rf.{n}{i}"
            _image(root / folder / "images" / f"{stem}.jpg", seed=10 * n + i)
            (root / folder / "labels").mkdir(exist_ok=True)
            (root / folder / "labels" / f"{stem}.txt").write_text(BOX + POLYGON)
    yaml = "train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: 2\n"
    (root / "data.yaml").write_text(yaml + ("names: ['pit', 'dune']\n" if names else ""))
    return root


def test_box_and_polygon_lines(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(BOX + POLYGON + "\n")
    box, polygon = parse_yolo_file(tmp_path / "a.txt", 64, 64)
    assert (box.class_id, polygon.class_id) == (1, 2)
    assert box.polygon is None and box.box == pytest.approx((12.8, 12.8, 25.6, 25.6))
    assert polygon.polygon is not None and polygon.box == pytest.approx((32.0, 32.0, 57.6, 57.6))
    mask = yolo_mask([box, polygon], 64, 64)
    assert (mask[13:26, 13:26] == 1).all() and int((mask == 1).sum()) == 13 * 13
    assert (mask[32:58, 32:58] == 2).all() and int((mask == 2).sum()) == 26 * 26
    for bad, expect in (("0 0.5 0.5 0.1\n", "has 4 values"), ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n", "has 8 values"),
                        ("x 0.5 0.5 0.1 0.1\n", "not a class id"), ("0 2 2 0.1 0.1\n", "empty box")):
        (tmp_path / "b.txt").write_text(bad)
        with pytest.raises(InputError, match=expect):
            parse_yolo_file(tmp_path / "b.txt", 64, 64)


def test_a_roboflow_export_is_one_dataset_with_three_splits(tmp_path: Path) -> None:
    root = _roboflow(tmp_path / "rf")
    ds = SegDataset.open(root)
    assert len(ds) == 6 and {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert ds.classes == {0: "background", 1: "pit", 2: "dune"}
    mask = ds.read_mask(ds.splits["val"][0])
    assert sorted(np.unique(mask).tolist()) == [0, 1, 2]
    report = check_dataset(root)
    assert report.ok and not report.warnings, report.problems
    assert report.n_masks == 6 and report.class_images == {0: 6, 1: 6, 2: 6}


def test_check_reads_yolo_labels_and_names_a_bad_line(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for i in range(2):
        _image(root / "images" / f"t{i}.png", seed=i)
    (root / "labels").mkdir()
    (root / "labels" / "t0.txt").write_text(BOX + "4 0.5 0.5 0.2 0.2\n")  # classes 0 and 4, no data.yaml
    (root / "labels" / "t1.txt").write_text("0 0.5 0.5\n")
    report = check_dataset(root)
    assert report.classes == {0: "background", 1: "class 0", 5: "class 4"}
    assert [(p.stem, p.kind) for p in report.problems] == [("t1", "unreadable-mask")]
    assert "t1.txt:1 has 3 values" in report.problems[0].message
    (root / "labels" / "t1.txt").write_text("")  # an image with no object: all background
    report = check_dataset(root)
    assert report.ok and [p.kind for p in report.warnings] == ["empty-mask"]


def test_roboflow_export_passes_check_and_trains_as_is(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's check: a Roboflow-style export with three split folders passes data check and trains as is."""
    root = _roboflow(tmp_path / "rf")
    code, text = run_cli(["data", "check", str(root)], monkeypatch, capsys)
    assert code == 0 and "train: 4, val: 1, test: 1" in text, text
    code, text = run_cli(["train", str(root), "--model", str(tiny_models["sam"]), "--epochs", "1",
                          "--out", str(tmp_path / "adapter")], monkeypatch, capsys)
    assert code == 0, text
    assert "trained domain-decoder on 4 images" in text
    import json

    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["classes"] in ({"0": "background", "1": "pit", "2": "dune"}, ["background", "pit", "dune"])
