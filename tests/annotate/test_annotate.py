"""Annotation by prompting: pseudo-label datasets, provenance, mode comparison, expert label files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

import samadapt.predict.segmenter as segment_module
from helpers.cli import run_cli
from helpers.decoders import box_decoder
from helpers.realdata import shared_data
from samadapt.annotate import annotate_dataset, compare_modes, read_csv_labels, read_yolo_folder
from samadapt.annotate.core import pick_automatic, regions_from_mask
from samadapt.errors import InputError
from samadapt.predict.result import SegmentationResult
from samadapt.predict.segmenter import Segmenter
from samadapt.sample import make_mars_dataset


@pytest.fixture
def mars_dataset(tmp_path: Path) -> Path:
    return make_mars_dataset(tmp_path / "mars", n_images=3, size=256, seed=1)


def _truth(root: Path, stem: str) -> np.ndarray:
    with rasterio.open(root / "masks" / f"{stem}.tif") as ds:
        return ds.read(1)


def test_box_mode_pseudo_labels_follow_the_prompts(
    mars_dataset: Path, tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))  # a decoder that fills its box exactly
    summary = annotate_dataset(mars_dataset, tmp_path / "out", segmenter=seg, mode="box")
    stems = sorted(p.stem for p in (mars_dataset / "images").glob("*.tif"))
    assert summary.images == len(stems)
    n_regions = 0
    for stem in stems:
        truth = _truth(mars_dataset, stem)
        with rasterio.open(tmp_path / "out" / "masks" / f"{stem}.tif") as ds:
            pseudo = ds.read(1)
            with rasterio.open(mars_dataset / "images" / f"{stem}.tif") as img:
                assert ds.crs == img.crs and ds.transform == img.transform
        regions = regions_from_mask(truth, "box")
        n_regions += len(regions)
        # every pit is covered by its box-shaped pseudo-label; the box of an ellipse holds about pi/4 of pit
        assert (pseudo[truth == 1] == 1).mean() > 0.95
        iou = np.logical_and(pseudo == 1, truth == 1).sum() / np.logical_or(pseudo == 1, truth == 1).sum()
        assert 0.6 < iou < 0.9
    rows = list(csv.DictReader(open(tmp_path / "out" / "sources.csv")))
    assert len(rows) == n_regions == summary.objects
    assert {r["mode"] for r in rows} == {"box"} and all(int(r["pixels"]) > 0 for r in rows)
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["1"] == "pit"
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == [f"{s}.tif" for s in stems]


def test_point_and_auto_modes_run_and_record_sources(
    mars_dataset: Path, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    seg = Segmenter(tiny_models["sam"], cache=False)
    for mode in ("point", "auto"):
        summary = annotate_dataset(mars_dataset, tmp_path / mode, segmenter=seg, mode=mode)
        rows = list(csv.DictReader(open(tmp_path / mode / "sources.csv")))
        assert len(rows) == summary.objects > 0
        if mode == "auto":
            assert all(r["source"].startswith("auto:") or r["source"] == "none" for r in rows)
    assert seg.encoder_calls == 3  # the second mode reused every embedding


def test_auto_mode_takes_the_best_mask_covering_the_interior_point() -> None:
    masks = np.zeros((4, 10, 10), bool)
    masks[0, 0:5, 0:5] = True  # covers the region's deepest point (3, 3), score 0.9
    masks[1, 2:8, 2:8] = True  # covers it, score 0.95 -> chosen
    masks[2, 8:10, 8:10] = True  # best score but does not overlap
    masks[3] = True
    masks[3, 2:6, 2:6] = False  # a background mask touching the region's edge only, score 0.97
    masks[3, 2, 2] = True
    everything = SegmentationResult(masks=masks, scores=np.array([0.9, 0.95, 0.99, 0.97], np.float32))
    region = np.zeros((10, 10), bool)
    region[2:5, 2:5] = True
    assert pick_automatic(region, everything) == 1
    region[:] = False
    region[0, 9] = True
    assert pick_automatic(region, everything) == 3  # only the background mask covers that pixel
    masks[3, 0, 9] = False
    assert pick_automatic(region, everything) is None


def test_compare_writes_table_and_figure(
    mars_dataset: Path, tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    report = compare_modes(mars_dataset, tmp_path / "cmp", segmenter=seg, figure_images=2)
    rows = list(csv.reader(open(report.csv_path)))
    assert rows[0] == ["image", "iou_auto", "iou_point", "iou_box"]
    assert len(rows) == 1 + 3 + 2  # header, 3 images, mean, dataset mIoU
    assert rows[-2][0] == "mean over 3 images with objects"
    assert float(rows[-2][3]) == pytest.approx(report.mean_iou("box"), abs=1e-4)
    assert 0.6 < report.mean_iou("box") < 0.9
    from PIL import Image

    assert Image.open(report.figure_path).size[0] > 600


def test_compare_reports_images_without_objects_apart(
    mars_dataset: Path, tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose truth has no object scores no IoU (it is 0/0, not 1.0); what each mode found there is listed."""
    masks = sorted((mars_dataset / "masks").glob("*.tif"))
    with rasterio.open(masks[0], "r+") as ds:
        ds.write(np.zeros((1, ds.height, ds.width), np.uint8))
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    report = compare_modes(mars_dataset, tmp_path / "cmp", segmenter=seg, figure_images=1)
    empty = dict(report.without_objects)
    assert list(empty) == [masks[0].stem]
    assert empty[masks[0].stem]["box"] == 0  # no object, so no box prompt, so nothing labelled
    row = dict(report.per_image)[masks[0].stem]
    assert all(np.isnan(row[m]) for m in ("auto", "point", "box"))
    scored = [r["box"] for stem, r in report.per_image if stem not in empty]
    assert report.mean_iou("box") == pytest.approx(np.mean(scored))
    rows = list(csv.reader(open(report.csv_path)))
    assert rows[1][3].startswith("no objects") and rows[-2][0] == "mean over 2 images with objects"


def test_yolo_and_csv_readers(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n3 0.1 0.1 0.4 0.4\n")
    (tmp_path / "data.yaml").write_text("nc: 4\nnames: ['p1', 'p2', 'p3', 'p4']\n")
    labels = read_yolo_folder(tmp_path / "labels", {"a": (100, 200)})
    boxes = [o.prompt.box.tolist() for o in labels.objects["a"]]
    assert boxes[0] == pytest.approx([80, 30, 120, 70])
    assert boxes[1] == pytest.approx([0, 0, 60, 30])  # clipped at the image edge
    assert [o.class_id for o in labels.objects["a"]] == [1, 4]
    assert labels.class_names[4] == "p4"
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(InputError, match=r"b.txt:1 has 4 values"):
        read_yolo_folder(tmp_path / "labels", {"b": (10, 10)})
    (tmp_path / "p.csv").write_text("image,x,y,label,object\na.png,5,6,1,o1\na.png,9,9,0,o1\nb.png,1,1,1,\n")
    pts = read_csv_labels(tmp_path / "p.csv")
    assert pts.objects["a"][0].prompt.labels.tolist() == [1, 0] and len(pts.objects["b"]) == 1
    (tmp_path / "bad.csv").write_text("image,u,v\na,1,2\n")
    with pytest.raises(InputError, match="x0,y0,x1,y1"):
        read_csv_labels(tmp_path / "bad.csv")


_cli = run_cli


def test_cli_compare_and_annotate(
    mars_dataset: Path, tmp_path: Path, tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    code, text = _cli(["annotate", str(mars_dataset), "--compare", "--model", str(tiny_models["sam"]),
                       "--out", str(tmp_path / "cmp")], monkeypatch, capsys)
    assert code == 0, text
    assert "mean" in text
    assert (tmp_path / "cmp" / "compare.csv").is_file() and (tmp_path / "cmp" / "compare.png").is_file()
    code, text = _cli(["annotate", str(mars_dataset), "--mode", "box", "--model", str(tiny_models["sam"]),
                       "--out", str(tmp_path / "ann")], monkeypatch, capsys)
    assert code == 0, text
    code, text = _cli(["annotate", str(mars_dataset), "--mode", "box", "--model", str(tiny_models["sam"]),
                       "--out", str(tmp_path / "ann")], monkeypatch, capsys)
    assert code == 2 and "pass --overwrite" in text
    code, text = _cli(["annotate", str(mars_dataset), "--mode", "lasso", "--out", str(tmp_path / "x")],
                      monkeypatch, capsys)
    assert code == 2 and "--mode must be box, point, auto or text" in text


@pytest.mark.realdata
def test_mars_pits_from_yolo_boxes(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_data("mars_pits_hirise")
    stems = sorted(p.stem for p in (src / "images").iterdir())[:6]
    # a small copy of the YOLO layout (images/ + labels/ + data.yaml), to keep the test fast
    work = tmp_path / "pits"
    (work / "images").mkdir(parents=True)
    (work / "labels").mkdir()
    for stem in stems:
        img = next((src / "images").glob(f"{stem}.*"))
        shutil.copy(img, work / "images" / img.name)
        shutil.copy(src / "labels" / f"{stem}.txt", work / "labels" / f"{stem}.txt")
    shutil.copy(src / "data.yaml", work / "data.yaml")
    code, text = _cli(["annotate", str(work), "--mode", "box", "--model", str(tiny_models["sam"]),
                       "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 0, text
    masks = sorted(p.stem for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == stems  # one mask per image
    n_boxes = sum(len([row for row in (work / "labels" / f"{s}.txt").read_text().splitlines() if row.strip()])
                  for s in stems)
    rows = list(csv.DictReader(open(tmp_path / "out" / "sources.csv")))
    assert len(rows) == n_boxes
    # with a decoder that fills its box, every expert box is covered by its class
    from samadapt.annotate.experts import read_yolo_folder as ryf
    from samadapt.data.dataset import SegDataset

    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))
    ds = SegDataset.open(work)
    sizes = {s: (ds.read_image(s).height, ds.read_image(s).width) for s in stems}
    experts = ryf(work / "labels", sizes)
    annotate_dataset(work, tmp_path / "filled", segmenter=seg, mode="box", experts=experts)
    for stem in stems:
        from PIL import Image

        pseudo = np.asarray(Image.open(tmp_path / "filled" / "masks" / f"{stem}.png"))
        for obj in experts.objects[stem]:
            x0, y0, x1, y1 = (int(round(v)) for v in obj.prompt.box)
            inner = pseudo[y0 + 6 : y1 - 6, x0 + 6 : x1 - 6]  # away from the low-res edge
            if inner.size:
                assert (inner > 0).mean() > 0.9, (stem, obj.prompt.box)
    # a broken copy: a label line with a missing value is rejected with its file and line
    (work / "labels" / f"{stems[0]}.txt").write_text("0 0.5 0.5 0.1\n")
    code, text = _cli(["annotate", str(work), "--mode", "box", "--model", str(tiny_models["sam"]),
                       "--out", str(tmp_path / "broken")], monkeypatch, capsys)
    assert code == 2 and f"{stems[0]}.txt:1 has 4 values" in text
