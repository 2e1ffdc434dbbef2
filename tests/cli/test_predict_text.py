"""``samadapt predict --text`` from the command line: a multi-tile raster, one polygon per object."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import box as shapely_box

import samadapt.predict.segmenter as segment_module
from helpers.cli import run_cli
from helpers.decoders import box_decoder
from helpers.rasters import GRID, write_geotiff
from helpers.text import BrightDetector
from samadapt.predict.segmenter import Segmenter
from samadapt.text.options import TextSearch

#: The bright object, in raster pixels (x0, y0, x1, y1): across tile edges of 256 px tiles.
OBJECT = (200, 100, 300, 180)


def test_predict_text_maps_a_multi_tile_raster(tiny_models: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = np.random.default_rng(0).integers(20, 90, size=(3, 400, 600)).astype(np.uint8)
    x0, y0, x1, y1 = OBJECT
    data[:, y0:y1, x0:x1] = 240
    raster = write_geotiff(tmp_path / "scene.tif", data)
    monkeypatch.setattr(segment_module, "decode", box_decoder(Segmenter(tiny_models["sam"], cache=False)))
    monkeypatch.setattr(TextSearch, "open_detector", lambda self, device: BrightDetector(score=0.75))
    out = tmp_path / "map"
    code, text = run_cli(["predict", str(tiny_models["sam"]), str(raster), "--text", "pit", "--text", "dune",
                          "--detector", "grounding-dino-tiny", "--box-threshold", "0.3", "--text-threshold", "0.2",
                          "-o", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert "random-initialised" in text and "done" in text
    frame = gpd.read_file(out / "scene_polygons.gpkg")
    assert list(frame.columns) == ["class", "phrase", "detector_score", "area", "geometry"]
    assert len(frame) == 1 and frame["phrase"].tolist() == ["pit"]
    assert frame["detector_score"].iloc[0] == pytest.approx(0.75)
    (ax, ay), (bx, by) = GRID * (x0, y0), GRID * (x1, y1)
    in_map = shapely_box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
    assert in_map.buffer(2 * GRID.a).contains(frame.geometry.iloc[0])
    assert {p.name for p in out.iterdir()} == {"scene_classes.tif", "scene_classes.json", "scene_polygons.gpkg",
                                              "scene.done.json"}
