"""Mapping by name (``predict --text``): tiles searched, objects merged across tile edges, one class per phrase."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from shapely.geometry import box as shapely_box

import samadapt.predict.segmenter as segment_module
from helpers.decoders import box_decoder
from helpers.rasters import GRID, UTM, write_geotiff
from helpers.text import BrightDetector
from samadapt.errors import InputError
from samadapt.mapping.runner import MapOptions
from samadapt.mapping.text import Pieces, merge_pieces, predict_text_raster, predict_text_rasters
from samadapt.predict.segmenter import Segmenter
from samadapt.text.search import TextQuery

#: The bright object of the test raster, in its pixels (x0, y0, x1, y1): across the edges of the 256 px tiles.
OBJECT = (200, 100, 300, 180)


def bright_raster(path: Path, height: int = 400, width: int = 600) -> Path:
    """A 3-band uint8 raster of dark noise with :data:`OBJECT` bright."""
    data = np.random.default_rng(0).integers(20, 90, size=(3, height, width)).astype(np.uint8)
    x0, y0, x1, y1 = OBJECT
    data[:, y0:y1, x0:x1] = 240
    return write_geotiff(path, data)


@pytest.fixture
def segmenter(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Segmenter:
    seg = Segmenter(tiny_models["sam"], cache=False)
    monkeypatch.setattr(segment_module, "decode", box_decoder(seg))  # segments exactly its box
    return seg


def _map_box(x0: float, y0: float, x1: float, y1: float) -> shapely.Geometry:
    """A box in raster pixels as a polygon in map coordinates of :data:`GRID`."""
    (ax, ay), (bx, by) = GRID * (x0, y0), GRID * (x1, y1)
    return shapely_box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def test_an_object_across_tile_edges_is_one_polygon_in_its_box(segmenter: Segmenter, tmp_path: Path) -> None:
    raster = bright_raster(tmp_path / "scene.tif")
    detector = BrightDetector(score=0.8)
    query = TextQuery(("pit", "dune"))
    seen: list[tuple[int, int]] = []
    result = predict_text_raster(segmenter, raster, tmp_path / "out", query, detector,
                                 progress=lambda name, n, total: seen.append((n, total)))
    assert result.status == "done"
    assert result.tiles == 6 and detector.calls == 6 and seen[-1] == (6, 6)  # 3 x 2 tiles of 256 px
    frame = gpd.read_file(result.outputs["polygons"])
    assert list(frame.columns) == ["class", "phrase", "detector_score", "area", "geometry"]
    assert frame.crs == UTM
    assert len(frame) == 1  # one object, though four tiles saw parts of it
    row = frame.iloc[0]
    assert row["phrase"] == "pit" and row["class"] == 1 and row["detector_score"] == pytest.approx(0.8)
    pixel = abs(GRID.a)
    assert _map_box(*OBJECT).buffer(2 * pixel).contains(row.geometry)  # within the box (a pixel or two at most)
    assert row.geometry.area > 0.95 * _map_box(*OBJECT).area
    assert row["area"] == pytest.approx(row.geometry.area)
    with rasterio.open(result.outputs["classes"]) as ds:
        labels = ds.read(1)
        assert ds.crs == UTM and ds.transform == GRID
    x0, y0, x1, y1 = OBJECT
    assert (labels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] == 1).all()
    outside = np.ones_like(labels, bool)
    outside[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2] = False
    assert (labels[outside] == 0).all()  # "dune" found nothing: no class 2 anywhere
    assert json.loads(result.outputs["names"].read_text()) == {"0": "background", "1": "pit", "2": "dune"}
    record = json.loads((tmp_path / "out" / "scene.done.json").read_text())
    assert record["phrases"] == ["pit", "dune"] and record["pieces"] == 4
    assert not list((tmp_path / "out").glob(".*"))  # no scratch left


def test_without_overlap_pieces_that_touch_at_the_edge_merge(segmenter: Segmenter, tmp_path: Path) -> None:
    raster = bright_raster(tmp_path / "scene.tif", height=256, width=512)
    result = predict_text_raster(segmenter, raster, tmp_path / "out", TextQuery(("pit",)), BrightDetector(score=0.8),
                                 MapOptions(tile=256, overlap=0, probabilities=True))
    frame = gpd.read_file(result.outputs["polygons"])
    assert len(frame) == 1 and frame.geometry.iloc[0].geom_type in ("Polygon", "MultiPolygon")
    assert len(getattr(frame.geometry.iloc[0], "geoms", [frame.geometry.iloc[0]])) == 1
    with rasterio.open(result.outputs["probabilities"]) as ds:
        probs = ds.read()
    assert probs.shape == (2, 256, 512)
    assert probs[1, 140, 250] == round(0.8 * 255) and probs[0, 140, 250] == 0 and probs[0, 10, 10] == 255


def test_merging_joins_tiles_not_neighbours_in_one_tile() -> None:
    pieces = Pieces()
    for phrase, tile, geom in [(0, 1, shapely_box(0, 0, 10, 10)), (0, 2, shapely_box(10, 0, 20, 10)),  # one object
                               (0, 1, shapely_box(0, 10, 8, 20)),  # touches the first, same tile: its own object
                               (1, 2, shapely_box(5, 5, 15, 15))]:  # another phrase: never merged with pits
        pieces.phrase.append(phrase)
        pieces.score.append(0.5 + tile / 10)
        pieces.tile.append(tile)
        pieces.geometry.append(geom)
    objects = merge_pieces(pieces)
    assert [(k, round(s, 2)) for k, s, _ in objects] == [(0, 0.7), (0, 0.6), (1, 0.7)]
    assert objects[0][2].equals(shapely_box(0, 0, 20, 10))
    assert merge_pieces(Pieces()) == []


def test_nothing_found_gives_an_empty_layer_and_a_rerun_is_skipped(segmenter: Segmenter, tmp_path: Path) -> None:
    raster = bright_raster(tmp_path / "scene.tif", height=200, width=300)
    out = tmp_path / "out"
    results = predict_text_rasters(segmenter, [raster, tmp_path / "missing.tif"], out, TextQuery(("dune",)),
                                   BrightDetector(score=0.8), MapOptions(polygons="geojson"))
    assert [r.status for r in results] == ["done", "failed"] and "missing.tif" in results[1].error
    assert len(gpd.read_file(results[0].outputs["polygons"])) == 0
    with rasterio.open(results[0].outputs["classes"]) as ds:
        assert (ds.read(1) == 0).all()
    again = predict_text_rasters(segmenter, [raster], out, TextQuery(("dune",)), BrightDetector(score=0.8))
    assert again[0].status == "skipped"
    with pytest.raises(InputError, match="mapped with the phrases 'dune'; pass --overwrite"):
        predict_text_raster(segmenter, raster, out, TextQuery(("pit",)), BrightDetector(score=0.8))
    redone = predict_text_raster(segmenter, raster, out, TextQuery(("pit",)), BrightDetector(score=0.8),
                                 MapOptions(overwrite=True, polygons="geojson"))
    assert len(gpd.read_file(redone.outputs["polygons"])) == 1


def test_settings_are_checked_before_any_tile(segmenter: Segmenter, tmp_path: Path) -> None:
    raster = bright_raster(tmp_path / "scene.tif", height=64, width=64)
    with pytest.raises(InputError, match="cannot read text"):
        predict_text_raster(segmenter, raster, tmp_path / "out", TextQuery(("pit",)), None)
    with pytest.raises(InputError, match="overlap"):
        predict_text_raster(segmenter, raster, tmp_path / "out", TextQuery(("pit",)), BrightDetector(score=0.8),
                            MapOptions(tile=64, overlap=64))
    assert not (tmp_path / "out").exists()
