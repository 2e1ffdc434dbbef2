"""Prompt files keep their attributes: ``--class-column`` classes and ``prompt_id`` in segment and predict --prompts."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box as shapely_box

import samadapt.predict.segmenter as segment_module
from helpers.cli import run_cli
from helpers.decoders import box_decoder
from helpers.rasters import write_geotiff
from samadapt.predict.segmenter import Segmenter

GRID = from_origin(500000.0, 4000000.0, 1.0, 1.0)  # 1 m pixels, x = 500000 + col, y = 4000000 - row
BOXES = [(8, 8, 40, 40), (64, 16, 104, 56), (16, 56, 48, 88)]  # pixels x0, y0, x1, y1


@pytest.fixture
def image(tmp_path: Path) -> Path:
    pixels = (np.random.default_rng(0).random((3, 96, 128)) * 255).astype("uint8")
    return write_geotiff(tmp_path / "scene.tif", pixels, crs="EPSG:32633", transform=GRID)


@pytest.fixture
def boxes_decoded(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny SAM with a decoder that fills its box exactly."""
    monkeypatch.setattr(segment_module, "decode", box_decoder(Segmenter(tiny_models["sam"], cache=False)))
    return tiny_models["sam"]


def _csv(path: Path, classes: list[str] | None) -> Path:
    if classes is None:
        rows = ["x0,y0,x1,y1", *(",".join(map(str, b)) for b in BOXES)]
    else:
        rows = ["x0,y0,x1,y1,kind", *(f"{b[0]},{b[1]},{b[2]},{b[3]},{c}" for b, c in zip(BOXES, classes, strict=True))]
    path.write_text("\n".join(rows) + "\n")
    return path


def _gpkg(path: Path, fids: list[int], classes: list[str]) -> Path:
    geoms = [shapely_box(500000 + x0, 4000000 - y1, 500000 + x1, 4000000 - y0) for x0, y0, x1, y1 in BOXES]
    frame = gpd.GeoDataFrame({"fid": fids, "kind": classes}, geometry=geoms, crs="EPSG:32633")
    frame.to_file(path, driver="GPKG", engine="pyogrio")  # GDAL takes a "fid" column as the FID
    return path


def _centre_value(raster: Path, k: int) -> int:
    x0, y0, x1, y1 = BOXES[k]
    with rasterio.open(raster) as ds:
        return int(ds.read(1)[(y0 + y1) // 2, (x0 + x1) // 2])


def test_segment_names_classes_and_prompt_ids_from_a_csv(image: Path, boxes_decoded: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _csv(tmp_path / "p.csv", ["pit", "crater", "pit"])
    out = tmp_path / "out"
    code, text = run_cli(["segment", str(image), "-m", str(boxes_decoded), "--prompts", str(prompts),
                          "--class-column", "kind", "-o", str(out / "m.gpkg"), "-o", str(out / "m.tif")],
                         monkeypatch, capsys)
    assert code == 0, text
    polygons = gpd.read_file(out / "m.gpkg")
    assert polygons["prompt_id"].tolist() == [0, 1, 2]  # CSV data rows
    assert polygons["class"].tolist() == [2, 1, 2]  # names in sorted order: crater = 1, pit = 2
    assert polygons["class_name"].tolist() == ["pit", "crater", "pit"]
    for k, geom in enumerate(polygons.geometry):  # each polygon is where its own prompt is
        x0, y0, x1, y1 = BOXES[k]
        assert geom.intersection(shapely_box(500000 + x0, 4000000 - y1, 500000 + x1, 4000000 - y0)).area > \
            0.8 * geom.area
    assert [_centre_value(out / "m.tif", k) for k in range(3)] == [2, 1, 2]
    assert json.loads((out / "m_classes.json").read_text()) == {"0": "background", "1": "crater", "2": "pit"}


def test_segment_integer_classes_are_ids_and_cli_prompts_are_numbered(image: Path, boxes_decoded: Path,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _csv(tmp_path / "p.csv", ["7", "3", "7"])
    code, text = run_cli(["segment", str(image), "-m", str(boxes_decoded), "--prompts", str(prompts),
                          "--class-column", "KIND", "-o", str(tmp_path / "m.tif"), "-o", str(tmp_path / "m.gpkg")],
                         monkeypatch, capsys)
    assert code == 0, text
    assert [_centre_value(tmp_path / "m.tif", k) for k in range(3)] == [7, 3, 7]
    assert gpd.read_file(tmp_path / "m.gpkg")["class"].tolist() == [7, 3, 7]
    boxes = [f"{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in BOXES[:2]]
    code, text = run_cli(["segment", str(image), "-m", str(boxes_decoded), "--box", boxes[0], "--box", boxes[1],
                          "-o", str(tmp_path / "b.geojson")], monkeypatch, capsys)
    assert code == 0, text
    found = gpd.read_file(tmp_path / "b.geojson")
    assert found["prompt_id"].tolist() == [0, 1] and "class" not in found.columns


def test_predict_prompts_keep_feature_ids_and_classes(image: Path, boxes_decoded: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _gpkg(tmp_path / "p.gpkg", [11, 5, 42], ["dune", "pit", "dune"])
    code, text = run_cli(["predict", str(boxes_decoded), str(image), "--prompts", str(prompts),
                          "--class-column", "kind", "-o", str(tmp_path / "maps")], monkeypatch, capsys)
    assert code == 0, text
    polygons = gpd.read_file(tmp_path / "maps" / "scene_polygons.gpkg")
    assert sorted(zip(polygons["prompt_id"], polygons["class"], polygons["class_name"], strict=True)) == \
        [(5, 2, "pit"), (11, 1, "dune"), (42, 1, "dune")]
    classes = tmp_path / "maps" / "scene_classes.tif"
    assert [_centre_value(classes, k) for k in range(3)] == [1, 2, 1]
    names = json.loads((tmp_path / "maps" / "scene_classes.json").read_text())
    assert names == {"0": "background", "1": "dune", "2": "pit"}


def test_predict_prompts_without_class_column_still_carry_prompt_ids(image: Path, boxes_decoded: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _csv(tmp_path / "p.csv", None)
    code, text = run_cli(["predict", str(boxes_decoded), str(image), "--prompts", str(prompts),
                          "-o", str(tmp_path / "maps")], monkeypatch, capsys)
    assert code == 0, text
    polygons = gpd.read_file(tmp_path / "maps" / "scene_polygons.gpkg")
    assert sorted(polygons["prompt_id"]) == [0, 1, 2] and set(polygons["class"]) == {1}
    assert [_centre_value(tmp_path / "maps" / "scene_classes.tif", k) for k in range(3)] == [1, 1, 1]


def test_predict_prompts_with_instances_give_each_prompted_object_its_own_id(
    image: Path, boxes_decoded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Three prompted objects of one class: three ids, one per object, the same in polygons and raster
    (regions of the class raster would merge touching objects of a class)."""
    prompts = tmp_path / "p.csv"  # the first two boxes share an edge: one region of the class raster
    prompts.write_text("x0,y0,x1,y1\n8,8,40,40\n40,8,72,40\n16,56,48,88\n")
    code, text = run_cli(["predict", str(boxes_decoded), str(image), "--prompts", str(prompts), "--instances",
                          "-o", str(tmp_path / "maps")], monkeypatch, capsys)
    assert code == 0, text
    polygons = gpd.read_file(tmp_path / "maps" / "scene_polygons.gpkg")
    by_prompt = dict(zip(polygons["prompt_id"], polygons["instance_id"], strict=True))
    assert by_prompt == {0: 1, 1: 2, 2: 3}
    with rasterio.open(tmp_path / "maps" / "scene_instances.tif") as ds:
        ids = ds.read(1)
    assert [int(ids[24, 24]), int(ids[24, 56]), int(ids[72, 32])] == [1, 2, 3]


def test_prompted_map_done_without_instances_is_redone_with_them(image: Path, boxes_decoded: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _csv(tmp_path / "p.csv", None)
    args = ["predict", str(boxes_decoded), str(image), "--prompts", str(prompts), "-o", str(tmp_path / "maps")]
    assert run_cli(args, monkeypatch, capsys)[0] == 0
    assert not (tmp_path / "maps" / "scene_instances.tif").exists()
    code, text = run_cli([*args, "--instances"], monkeypatch, capsys)
    assert code == 0 and "skipped" not in text, text
    assert "instance_id" in gpd.read_file(tmp_path / "maps" / "scene_polygons.gpkg").columns
    assert run_cli([*args, "--instances"], monkeypatch, capsys)[1].count("skipped") == 1  # now complete


@pytest.mark.parametrize("command", ["segment", "predict"])
def test_class_column_errors_are_one_sentence(command: str, image: Path, tiny_models: dict[str, Path],
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _csv(tmp_path / "p.csv", ["a", "b", "c"])
    model = str(tiny_models["sam"])
    head = ["segment", str(image), "-m", model] if command == "segment" else ["predict", model, str(image)]
    out = ["-o", str(tmp_path / ("m.gpkg" if command == "segment" else "maps"))]
    code, text = run_cli([*head, "--prompts", str(prompts), "--class-column", "type", *out], monkeypatch, capsys)
    assert code == 2 and text.count("error:") == 1, text
    assert "no column 'type'" in text and "x0, y0, x1, y1, kind" in text
    box = ["--box", "1,1,30,30"] if command == "segment" else []
    code, text = run_cli([*head, *box, "--class-column", "kind", *out], monkeypatch, capsys)
    assert code == 2 and "--class-column names a column of the --prompts file" in text, text
    assert not (tmp_path / "maps").exists() and not (tmp_path / "m.gpkg").exists()
