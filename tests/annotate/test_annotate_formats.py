"""annotate on a YOLO folder names every class it writes; --format coco writes the objects as COCO too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from helpers.cli import run_cli
from samadapt.data.check import check_dataset
from samadapt.data.dataset import SegDataset

#: pycocotools (2.0.11) under numpy 2 warns of its own copy= use on every decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _yolo_folder(root: Path) -> Path:
    """images/ + labels/ with YOLO classes 0-4 and no data.yaml."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(root / "images" / f"im{i}.png")
        (root / "labels" / f"im{i}.txt").write_text("".join(f"{k} {0.1 + 0.18 * k} 0.5 0.12 0.12\n" for k in range(5)))
    return root


def test_yolo_without_data_yaml_names_every_class_it_writes(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _yolo_folder(tmp_path / "yolo")
    out = tmp_path / "ann"
    code, text = run_cli(["annotate", str(src), "--mode", "box", "--model", str(tiny_models["sam"]), "--format",
                          "coco", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    classes = json.loads((out / "classes.json").read_text())
    assert classes == {"0": "background", **{str(k + 1): f"class {k}" for k in range(5)}}
    report = check_dataset(out)  # used to reject its own output: {"1": "object"} beside classes 1-5
    assert report.ok, report.problems
    # annotations.json holds the very masks, one object per connected region, and is in the manifest
    doc = json.loads((out / "annotations.json").read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4, 5]
    ds = SegDataset.open(out)
    for image in doc["images"]:
        mask = ds.read_mask(Path(image["file_name"]).stem)
        back = np.zeros_like(mask)
        for a in (a for a in doc["annotations"] if a["image_id"] == image["id"]):
            back[cocomask.decode(a["segmentation"]).astype(bool)] = a["category_id"]
        assert np.array_equal(back, np.where(mask == 255, 0, mask))
    assert "annotations.json" in json.loads((out / "samadapt.json").read_text())["files"]


def test_format_coco_is_refused_with_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _yolo_folder(tmp_path / "yolo")
    code, text = run_cli(["annotate", str(src), "--compare", "--format", "coco", "--out", str(tmp_path / "c")],
                         monkeypatch, capsys)
    assert code == 2 and "--format coco" in text
    code, text = run_cli(["annotate", str(src), "--format", "voc", "--out", str(tmp_path / "c")], monkeypatch, capsys)
    assert code == 2 and "--format must be masks or coco" in text
