"""COCO in and out: polygons and RLE read alike, crowds become ignore, a round trip changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from helpers.cli import run_cli
from samadapt.data.coco import coco_document, export_coco, import_coco
from samadapt.data.dataset import SegDataset
from samadapt.errors import InputError, InputFileError

#: pycocotools (2.0.11) under numpy 2 warns of its own copy= use on every decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 50


def _uncompressed(mask: np.ndarray) -> dict[str, object]:
    """An uncompressed COCO RLE (run lengths in column-major order, starting with zeros)."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def _square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray((rng.random((H, W, 3)) * 255).astype("uint8")).save(images / name)
    rle = cocomask.encode(np.asfortranarray(_square(2, 12, 2, 12)))
    doc = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 9, "file_name": "sub/b.png", "height": H, "width": W}],
        "categories": [{"id": 90, "name": "pit", "supercategory": "crater"},
                       {"id": 3, "name": "dune", "supercategory": "aeolian"}],
        "annotations": [
            # a large pit with a small dune on top of it (listed first: the smaller wins all the same)
            {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 7, "category_id": 90, "iscrowd": 0, "segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]]},
            {"id": 3, "image_id": 9, "category_id": 3, "iscrowd": 0,
             "segmentation": _uncompressed(_square(5, 9, 5, 25))},
            {"id": 4, "image_id": 9, "category_id": 90, "iscrowd": 1,
             "segmentation": _uncompressed(_square(20, 30, 30, 45))},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path, images


def _masks(folder: Path) -> dict[str, np.ndarray]:
    ds = SegDataset.open(folder)
    return {s: ds.read_mask(s) for s in ds.stems()}


def test_import_reads_rle_polygons_crowds_and_overlaps(tmp_path: Path) -> None:
    ann, images = _coco(tmp_path)
    summary = import_coco(ann, images, tmp_path / "ds")
    assert (summary.images, summary.objects, summary.classes, summary.crowd) == (2, 3, 2, 1)
    ds = SegDataset.open(tmp_path / "ds")
    assert ds.classes == {0: "background", 1: "dune", 2: "pit"}  # COCO ids 3 and 90, in id order
    record = json.loads((tmp_path / "ds" / "coco_categories.json").read_text())
    assert record["2"] == {"id": 90, "name": "pit", "supercategory": "crater"}
    a, b = ds.read_mask("a"), ds.read_mask("b")
    assert (a[2:12, 2:12] == 1).all()  # the smaller object on top
    assert int((a == 2).sum()) == 30 * 30 - 100
    assert (b[5:9, 5:25] == 1).all() and int((b == 1).sum()) == 80
    assert (b[20:30, 30:45] == 255).all() and int((b == 255).sum()) == 150  # crowd -> ignore
    from samadapt.data.check import check_dataset

    assert check_dataset(tmp_path / "ds").ok


def test_polygon_and_rle_of_one_shape_give_one_mask(tmp_path: Path) -> None:
    polygon = [[4.0, 6.0, 40.0, 6.0, 40.0, 30.0, 4.0, 30.0]]
    truth = np.asarray(cocomask.decode(cocomask.merge(cocomask.frPyObjects(polygon, H, W))))
    compressed = cocomask.encode(np.asfortranarray(truth))
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "imgs" / "x.png")
    masks = []
    for seg in (polygon, _uncompressed(truth), {"size": [H, W], "counts": compressed["counts"].decode()}):
        doc = {"images": [{"id": 1, "file_name": "x.png", "height": H, "width": W}],
               "categories": [{"id": 1, "name": "field"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": 0}]}
        (tmp_path / "c.json").write_text(json.dumps(doc))
        import_coco(tmp_path / "c.json", tmp_path / "imgs", tmp_path / "ds", overwrite=True)
        masks.append(_masks(tmp_path / "ds")["x"])
    assert masks[0].sum() > 0
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    assert np.array_equal(masks[0], truth)


def test_round_trip_keeps_masks_and_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if not a["iscrowd"]]  # ignore pixels are not objects
    ann.write_text(json.dumps(doc))
    code, text = run_cli(["data", "import-coco", str(ann), str(images), "--out", str(tmp_path / "ds1")],
                         monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["data", "export-coco", str(tmp_path / "ds1"), "--out", str(tmp_path / "out.json")],
                         monkeypatch, capsys)
    assert code == 0, text
    code, text = run_cli(["data", "import-coco", str(tmp_path / "out.json"), str(tmp_path / "ds1" / "images"),
                          "--out", str(tmp_path / "ds2")], monkeypatch, capsys)
    assert code == 0, text
    first, second = _masks(tmp_path / "ds1"), _masks(tmp_path / "ds2")
    assert first.keys() == second.keys() and all(np.array_equal(first[s], second[s]) for s in first)
    assert json.loads(ann.read_text())["categories"] == sorted(
        json.loads((tmp_path / "out.json").read_text())["categories"], key=lambda c: -c["id"])
    for name in ("classes.json", "coco_categories.json"):
        assert (tmp_path / "ds1" / name).read_text() == (tmp_path / "ds2" / name).read_text()
    # a second export refuses to overwrite unless asked
    code, text = run_cli(["data", "export-coco", str(tmp_path / "ds1"), "--out", str(tmp_path / "out.json")],
                         monkeypatch, capsys)
    assert code == 2 and "--overwrite" in text


def test_export_writes_one_exact_rle_object_per_region(tmp_path: Path) -> None:
    from samadapt.data.write import write_classes, write_sample
    from samadapt.imagery.read import GeoImage

    mask = np.zeros((H, W), np.uint8)
    mask[0:5, 0:5] = 1
    mask[5:8, 5:8] = 1  # touches the first square at a corner: one region (8-connectivity)
    mask[20:30, 20:30] = 2
    mask[35:40, 0:10] = 255  # ignore: not an object
    image = GeoImage(np.zeros((H, W, 3), np.uint8), np.ones((H, W), bool), None, None)
    write_sample(tmp_path / "ds", "t", image, mask, image_format="png")
    write_classes(tmp_path / "ds", {1: "pit", 2: "dune"})
    doc = coco_document(tmp_path / "ds")
    assert doc["categories"] == [{"id": 1, "name": "pit", "supercategory": ""},
                                 {"id": 2, "name": "dune", "supercategory": ""}]
    anns = doc["annotations"]
    assert [(a["category_id"], a["area"]) for a in anns] == [(1, 34), (2, 100)]
    assert anns[1]["bbox"] == [20.0, 20.0, 10.0, 10.0]
    back = np.zeros((H, W), np.uint8)
    for a in anns:
        back[cocomask.decode(a["segmentation"]).astype(bool)] = a["category_id"]
    assert np.array_equal(back, np.where(mask == 255, 0, mask))
    summary = export_coco(tmp_path / "ds", tmp_path / "a.json")
    assert (summary.images, summary.objects, summary.classes) == (1, 2, 2)


@pytest.mark.parametrize("fault, expect", [
    ("missing image", "is not in"), ("bad json", "not a readable JSON"), ("unknown category", "category_id 5"),
    ("unknown image", "image_id 99"), ("wrong size", "says"), ("not coco", "is not COCO"),
])
def test_import_errors_are_one_sentence(tmp_path: Path, fault: str, expect: str) -> None:
    ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    if fault == "missing image":
        (images / "a.jpg").unlink()
    elif fault == "bad json":
        ann.write_text("{ not json")
    elif fault == "unknown category":
        doc["annotations"][0]["category_id"] = 5
    elif fault == "unknown image":
        doc["annotations"][0]["image_id"] = 99
    elif fault == "wrong size":
        doc["images"][0]["height"] = 41
    elif fault == "not coco":
        doc = {"images": []}
    if fault != "bad json":
        ann.write_text(json.dumps(doc))
    with pytest.raises((InputError, InputFileError), match=expect):
        import_coco(ann, images, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
