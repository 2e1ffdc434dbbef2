"""Instance ids: one per object, stable across tiles and bands, in scan order."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from helpers.cli import run_cli
from helpers.rasters import write_geotiff
from samadapt.imagery.preprocess import Preprocessing
from samadapt.mapping.instances import INSTANCE_NODATA, label_instances, rasterize_objects
from samadapt.mapping.text import Pieces, merge_pieces
from samadapt.mapping.tiled import MapOptions, predict_raster
from samadapt.train.adapter import Prediction

MARS_EQC = "+proj=eqc +a=3396190 +b=3376200 +units=m +no_defs"
GRID = from_origin(1_000_000.0, 2_000_000.0, 50.0, 50.0)  # 50 m pixels


class DiscAdapter:
    """A stand-in adapter: class 1 wherever the first band is bright, whatever tile the pixel is in."""

    bands = None
    needs_prompts = False

    def __init__(self, tile: int = 64) -> None:
        self.method = SimpleNamespace(num_classes=2, preprocessing=Preprocessing(size=tile))

    def predict_sample(self, sample):
        p = (sample.pixels[:, :, 0] > 127).astype(np.float32) * 0.8 + 0.1
        return Prediction(labels=(p > 0.5).astype(np.uint8), probabilities=np.stack([1 - p, p]))


def _disc_scene(h: int = 128, w: int = 128) -> np.ndarray:
    """(3, H, W): a disc centred on the corner shared by four 64-pixel tiles, and a small square."""
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w), 40, np.uint8)
    img[(xx - 64) ** 2 + (yy - 64) ** 2 < 20**2] = 220
    img[5:10, 5:10] = 220
    return np.repeat(img[None], 3, 0)


def _classes(path: Path, labels: np.ndarray) -> Path:
    return write_geotiff(path, labels.astype(np.uint8), crs=MARS_EQC, transform=GRID, nodata=255)


def test_components_join_across_band_seams_in_scan_order(tmp_path: Path) -> None:
    labels = np.zeros((40, 30), np.uint8)
    yy, xx = np.mgrid[:40, :30]
    labels[(xx - 15) ** 2 + (yy - 20) ** 2 < 8**2] = 1  # a disc crossing the seams at rows 16 and 24
    labels[2:4, 2:4] = 2  # a class-2 square
    labels[4:6, 4:6] = 2  # touches it at a corner only: another object (4-connectivity)
    labels[30:38, 2] = 1
    labels[30:38, 6] = 1
    labels[37, 2:7] = 1  # a U whose arms meet only in a lower band: one object
    labels[0:3, 25:28] = 1
    labels[3, 25:28] = 2  # touches the class-1 block by an edge, but is another class: another object
    labels[39, 29] = 255  # nodata
    classes = _classes(tmp_path / "c.tif", labels)
    written = {}
    for rows in (8, 16, 1024):
        out = tmp_path / f"i{rows}.tif"
        kinds = label_instances(classes, out, rows=rows)
        with rasterio.open(out) as ds:
            written[rows] = ds.read(1)
            assert ds.dtypes[0] == "uint32" and ds.crs == rasterio.open(classes).crs
        assert kinds == {1: 1, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1}
    np.testing.assert_array_equal(written[8], written[1024])  # bands do not change ids
    np.testing.assert_array_equal(written[16], written[1024])
    ids = written[8]
    assert ids[0, 25] == 1 and ids[2, 2] == 2 and ids[3, 25] == 3 and ids[4, 4] == 4  # first pixel in scan order
    assert set(np.unique(ids[(xx - 15) ** 2 + (yy - 20) ** 2 < 8**2]).tolist()) == {5}
    assert ids[30, 2] == ids[30, 6] == 6  # the U's arms
    assert ids[39, 29] == INSTANCE_NODATA and ids[39, 0] == 0


def test_eight_connectivity_joins_corner_neighbours(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[2:4, 2:4] = 1
    labels[4:6, 4:6] = 1
    classes = _classes(tmp_path / "c.tif", labels)
    assert len(label_instances(classes, tmp_path / "four.tif", rows=4)) == 2
    assert len(label_instances(classes, tmp_path / "eight.tif", rows=4, connectivity=8)) == 1


def test_a_disc_spanning_four_tiles_gets_one_instance_id(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_scene(), crs=MARS_EQC, transform=GRID)
    result = predict_raster(DiscAdapter(tile=64), raster, tmp_path / "out", MapOptions(overlap=8, instances=True))
    assert result.tiles >= 4
    with rasterio.open(result.outputs["instances"]) as ds:
        ids = ds.read(1)
        assert ds.crs.to_wkt() == rasterio.open(raster).crs.to_wkt() and ds.transform == GRID
    disc = _disc_scene()[0] > 127
    assert np.unique(ids[disc]).tolist() == [1, 2]  # the square (first in scan order) and the disc
    assert np.unique(ids[40:90, 40:90][disc[40:90, 40:90]]).tolist() == [2]  # the disc across 4 tiles: one id
    assert (ids[~disc] == 0).all()
    frame = gpd.read_file(result.outputs["polygons"])
    assert frame["instance_id"].tolist() == [1, 2] and frame["class"].tolist() == [1, 1]
    assert frame.geometry.iloc[1].contains(shapely.Point(GRID * (64, 64)))


def test_a_run_without_instances_is_redone_when_they_are_asked_for(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "scene.tif", _disc_scene(), crs=MARS_EQC, transform=GRID)
    first = predict_raster(DiscAdapter(), raster, tmp_path / "out", MapOptions(overlap=8))
    assert "instances" not in first.outputs and "instance_id" not in gpd.read_file(first.outputs["polygons"])
    again = predict_raster(DiscAdapter(), raster, tmp_path / "out", MapOptions(overlap=8, instances=True))
    assert again.status == "done" and again.outputs["instances"].is_file()


def test_text_objects_merged_across_tiles_keep_one_id(tmp_path: Path) -> None:
    pieces = Pieces(phrase=[0, 0, 0], score=[0.5, 0.9, 0.7], tile=[1, 2, 2],
                    geometry=[shapely.box(10, 10, 64, 40), shapely.box(64, 10, 90, 40), shapely.box(100, 0, 120, 8)])
    objects = merge_pieces(pieces)
    assert len(objects) == 2 and objects[0][1] == 0.9  # the halves of the first object are one
    out = tmp_path / "ids.tif"
    rasterize_objects([g for *_, g in objects], [s for _, s, _ in objects], out, height=50, width=128, crs=MARS_EQC,
                      transform=GRID, rows=16)
    ids = rasterio.open(out).read(1)
    assert np.unique(ids[10:40, 10:90]).tolist() == [1] and np.unique(ids[0:8, 100:120]).tolist() == [2]
    assert ids[45, 5] == 0


def test_predict_command_writes_instances_and_a_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import samadapt.train.adapter

    monkeypatch.setattr(samadapt.train.adapter, "load_adapter", lambda *a, **k: DiscAdapter(tile=64))
    raster = write_geotiff(tmp_path / "scene.tif", _disc_scene(), crs=MARS_EQC, transform=GRID)
    code, text = run_cli(["predict", str(tmp_path / "ad"), str(raster), "--out", str(tmp_path / "maps"), "--overlap",
                          "8", "--instances", "--catalogue"], monkeypatch, capsys)
    assert code == 0, text
    maps = tmp_path / "maps"
    assert np.unique(rasterio.open(maps / "scene_instances.tif").read(1)).tolist() == [0, 1, 2]
    catalogue = maps / "scene_catalogue"
    assert {p.name for p in catalogue.iterdir()} == {"objects.gpkg", "objects.csv", "sfd.csv", "sfd.png",
                                                      "catalogue.json"}
    rows = gpd.read_file(catalogue / "objects.gpkg")
    assert rows["id"].tolist() == [1, 2]
    meta = json.loads((catalogue / "catalogue.json").read_text())
    assert meta["counting_area"]["source"] == "extent of the mapped raster (scene_classes.tif)"
    assert "2 objects" in text and "scene_catalogue" in text
    code, text = run_cli(["predict", str(tmp_path / "ad"), str(raster), "--out", str(tmp_path / "m2"), "--vector",
                          "none", "--catalogue"], monkeypatch, capsys)
    assert code == 2 and "--catalogue" in text and not (tmp_path / "m2").exists()


def test_segment_polygons_carry_their_value_in_the_label_image(tmp_path: Path) -> None:
    from samadapt.mapping.outputs import write_segmentation
    from samadapt.predict.result import SegmentationResult

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:10, 2:10] = True
    masks[1, 20:30, 5:35] = True
    result = SegmentationResult(masks, np.array([0.9, 0.8], np.float32))
    frame = gpd.read_file(write_segmentation(tmp_path / "s.gpkg", result, crs=MARS_EQC, transform=GRID, valid=None))
    labels = result.label_image()
    for ident, geom in zip(frame["instance_id"], frame.geometry, strict=True):
        col, row = ~GRID * (geom.representative_point().x, geom.representative_point().y)
        assert labels[int(row), int(col)] == ident
    assert frame["instance_id"].tolist() == [1, 2]


def test_text_mapping_gives_an_object_found_in_four_tiles_one_id(tiny_models: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import samadapt.predict.segmenter as segment_module
    from helpers.decoders import box_decoder
    from helpers.text import BrightDetector
    from samadapt.mapping.text import predict_text_raster
    from samadapt.predict.segmenter import Segmenter
    from samadapt.text.search import TextQuery

    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))  # segments exactly its box
    data = np.random.default_rng(0).integers(20, 90, size=(3, 400, 600)).astype(np.uint8)
    data[:, 100:180, 200:300] = 240  # across the edges of the 256 px tiles
    raster = write_geotiff(tmp_path / "scene.tif", data, crs=MARS_EQC, transform=GRID)
    result = predict_text_raster(seg, raster, tmp_path / "out", TextQuery(("pit",)), BrightDetector(score=0.8),
                                 MapOptions(instances=True))
    ids = rasterio.open(result.outputs["instances"]).read(1)
    assert np.unique(ids[102:178, 202:298]).tolist() == [1] and (ids[:90] == 0).all()
    frame = gpd.read_file(result.outputs["polygons"])
    assert list(frame.columns) == ["class", "instance_id", "phrase", "detector_score", "area", "geometry"]
    assert frame["instance_id"].tolist() == [1]
