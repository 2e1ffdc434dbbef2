"""The samadapt command: outputs on success, one sentence and exit code 2 on bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from helpers.cli import run_cli
from helpers.rasters import UTM, write_geotiff
from samadapt.cli import main

run = run_cli


def test_models_tiny_then_segment_writes_every_output(
    tmp_path: Path, utm_raster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "tiny"
    code, text = run(["models", "tiny", str(model), "--family", "sam"], monkeypatch, capsys)
    assert code == 0 and (model / "config.json").is_file(), text
    outs = [tmp_path / "o" / n for n in ("m.png", "m.tif", "m.gpkg", "m.geojson")]
    args = ["segment", str(utm_raster), "--model", str(model), "--box", "100,50,300,200", "--point", "150,100"]
    code, text = run(args + sum((["--out", str(p)] for p in outs), []), monkeypatch, capsys)
    assert code == 0, text
    assert "random-initialised" in text  # the tiny model's masks are flagged as meaningless
    for p in outs:
        assert p.is_file()
    with rasterio.open(outs[1]) as ds:
        assert ds.crs.to_epsg() == 32616
    assert json.loads(outs[3].read_text())["type"] == "FeatureCollection"
    # a second run refuses to overwrite
    code, text = run(args + ["--out", str(outs[0])], monkeypatch, capsys)
    assert code == 2 and "exists; pass --overwrite" in text


def test_segment_with_a_prompt_file_in_map_coordinates(
    tmp_path: Path, utm_raster: Path, tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from shapely.geometry import box

    with rasterio.open(utm_raster) as ds:
        t = ds.transform
    polys = [box(*(t @ (50, 250)), *(t @ (150, 150))), box(*(t @ (300, 120)), *(t @ (400, 40)))]
    gpd.GeoDataFrame(geometry=polys, crs="EPSG:32616").to_file(tmp_path / "boxes.gpkg")
    out = tmp_path / "m.gpkg"
    code, text = run(["segment", str(utm_raster), "--model", str(tiny_models["sam"]), "--prompts",
                      str(tmp_path / "boxes.gpkg"), "--out", str(out)], monkeypatch, capsys)
    assert code == 0, text
    assert "2 objects" in text
    assert "SAM sees it whole" not in text  # 500 px for a 256 px model: no note


def test_segment_notes_a_large_raster_seen_shrunk(tmp_path: Path, tiny_models: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from rasterio.transform import from_origin

    path = tmp_path / "strip.tif"
    data = np.random.default_rng(0).integers(0, 255, (1, 200, 1100), dtype=np.uint8)
    write_geotiff(path, data, crs=UTM, transform=from_origin(740000.0, 3740000.0, 0.5, 0.5))
    code, text = run(["segment", str(path), "--model", str(tiny_models["sam"]), "--box", "10,10,90,90",
                      "--out", str(tmp_path / "m.gpkg")], monkeypatch, capsys)
    assert code == 0, text
    assert "strip.tif is 1100 x 200 px: SAM sees it whole at 256 px, 4x smaller" in text
    assert "samadapt predict" in text and "--prompts FILE" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "10,10,50,50", "--point", "2000,3"], "point (2000, 3) lies outside the image"),
        (["--box", "10,10,50,50", "--bands", "5"], "band 5"),
        (["--box", "10,10,5,50"], "box"),
        ([], "give at least one --box, --point or --prompts file"),
        (["--box", "10,10,50,50", "--out", "x.shp"], "unknown suffix"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(
    extra: list[str], message: str, utm_raster: Path, tiny_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["segment", str(utm_raster), "--model", str(tiny_models["sam"]), "--out", str(tmp_path / "o.png"), *extra]
    code, text = run(args, monkeypatch, capsys)
    assert code == 2
    assert message in " ".join(text.split())
    assert "Traceback" not in text
    assert not (tmp_path / "o.png").exists()


def test_missing_image_unknown_model_and_wrong_family(
    tmp_path: Path, utm_raster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(["segment", str(tmp_path / "nope.tif"), "--box", "1,1,5,5", "-o", str(tmp_path / "a.png")],
                     monkeypatch, capsys)
    assert code == 2 and "not found" in text
    code, text = run(["segment", str(utm_raster), "--model", "sam-vit-bas", "--box", "1,1,5,5",
                      "-o", str(tmp_path / "a.png")], monkeypatch, capsys)
    assert code == 2 and "unknown model 'sam-vit-bas'" in " ".join(text.split())
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    code, text = run(["segment", str(utm_raster), "--model", str(tmp_path / "bert"), "--box", "1,1,5,5",
                      "-o", str(tmp_path / "a.png")], monkeypatch, capsys)
    assert code == 2 and "not a SAM-family checkpoint" in " ".join(text.split())


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from samadapt.errors import InputFileError

    monkeypatch.delenv("SAMADAPT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["samadapt", "--debug", "segment", str(tmp_path / "nope.tif"),
                                      "--box", "1,1,5,5", "-o", str(tmp_path / "a.png")])
    with pytest.raises(InputFileError):
        main()


def test_embed_caches_then_reports_hits(
    tmp_path: Path, utm_raster: Path, tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    img = tmp_path / "b.png"
    from PIL import Image

    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(img)
    args = ["embed", str(utm_raster), str(img), "--model", str(tiny_models["sam"]), "--batch-size", "2"]
    code, text = run(args, monkeypatch, capsys)
    assert code == 0 and "2 encoded, 0 already cached" in text
    code, text = run(args, monkeypatch, capsys)
    assert code == 0 and "0 encoded, 2 already cached" in text


def test_models_list_shows_cached_state(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(["models", "list"], monkeypatch, capsys)
    assert code == 0
    for name in ("sam-vit-base", "sam2.1-hiera-tiny", "sam-hq-vit-huge"):
        assert name in text


def test_demo_runs_offline_with_a_flagged_tiny_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(["demo", "--out", str(tmp_path / "demo")], monkeypatch, capsys)
    flat = " ".join(text.split())
    assert code == 0, text
    assert "NO CHECKPOINT" in flat and "mean nothing" in flat
    for name in ("mars_sample.tif", "pits.gpkg", "pits.tif", "pits.png", "overlay.png", "prompt_modes/compare.csv",
                 "prompt_modes/compare.png", "adapter/config.json", "adapter/adapter.safetensors",
                 "map/mars_sample_classes.tif", "map/mars_sample_polygons.gpkg"):
        assert (tmp_path / "demo" / name).is_file()
    frame = gpd.read_file(tmp_path / "demo" / "pits.gpkg")
    assert "Mars" in frame.crs.name


def test_data_check_and_build(
    tmp_path: Path, utm_raster: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shapely.geometry import box

    with rasterio.open(utm_raster) as ds:
        t = ds.transform
    polys = gpd.GeoDataFrame(geometry=[box(*(t @ (60, 200)), *(t @ (160, 100)))], crs="EPSG:32616").to_crs(4326)
    polys.to_file(tmp_path / "labels.gpkg")
    code, text = run(["data", "build", str(utm_raster), str(tmp_path / "labels.gpkg"), "--tile-size", "128",
                      "--out", str(tmp_path / "ds")], monkeypatch, capsys)
    assert code == 0, text
    code, text = run(["data", "check", str(tmp_path / "ds")], monkeypatch, capsys)
    assert code == 0, text
    # break it: a mask with a class id nothing names, and a mask whose image is gone
    mask = next((tmp_path / "ds" / "masks").iterdir())
    with rasterio.open(mask) as src:
        profile, data = src.profile, src.read(1)
    data[0, 0] = 7
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(data, 1)
    code, text = run(["data", "check", str(tmp_path / "ds")], monkeypatch, capsys)
    assert code == 1 and "7" in text


def test_outputs_that_cannot_all_be_written_stop_before_any_is(
    tmp_path: Path, utm_raster: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    ok = tmp_path / "ok" / "a.tif"
    base = ["segment", str(utm_raster), "--model", str(tiny_models["sam"]), "--box", "100,50,300,200"]
    (tmp_path / "a-file").write_text("not a folder")
    code, text = run(base + ["-o", str(ok), "-o", str(tmp_path / "a-file" / "b.gpkg")], monkeypatch, capsys)
    assert code == 2 and "cannot be written" in text and not ok.exists()
    code, text = run(base + ["-o", str(ok), "-o", str(tmp_path / "ok" / ".." / "ok" / "a.tif")], monkeypatch, capsys)
    assert code == 2 and "given twice" in text and not ok.exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not os.access(ro, os.W_OK):  # (root may write into a read-only folder: nothing to refuse then)
            code, text = run(base + ["-o", str(ok), "-o", str(ro / "b.gpkg")], monkeypatch, capsys)
            assert code == 2 and "cannot be written" in text and not ok.exists()
    finally:
        ro.chmod(0o755)
