"""``segment`` and ``predict`` read COGs from URLs and STAC items by window; network faults exit 2."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import rasterio

from helpers.cli import run_cli
from helpers.httpfiles import serve_files
from imagery.test_sources import _stac_item, write_cog


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    write_cog(root / "scene.tif")
    return root


def test_segment_a_cog_url(served: Path, tiny_models: dict[str, Path], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gpkg"
    with serve_files(served) as srv:
        code, text = run_cli(["segment", srv.url("scene.tif"), "-m", str(tiny_models["sam"]),
                              "--box", "500100,3999700,500300,3999900", "--crs", "EPSG:32616", "--out", str(out)],
                             monkeypatch, capsys)
        assert code == 0, text
    assert gpd.read_file(out).crs.to_epsg() == 32616


def test_predict_a_cog_url_with_prompts(served: Path, tiny_models: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "boxes.geojson"
    gpd.GeoDataFrame(geometry=gpd.GeoSeries.from_wkt(["POLYGON((500100 3999900, 500200 3999900, 500200 3999800, "
                                                      "500100 3999800, 500100 3999900))"]),
                     crs="EPSG:32616").to_file(prompts)
    with serve_files(served) as srv:
        code, text = run_cli(["predict", str(tiny_models["sam"]), srv.url("scene.tif"), "--prompts", str(prompts),
                              "-o", str(tmp_path / "m")], monkeypatch, capsys)
        assert code == 0, text
        assert srv.bytes_served < (served / "scene.tif").stat().st_size
    classes = sorted((tmp_path / "m").glob("scene*.tif"))
    assert classes, list((tmp_path / "m").iterdir())
    with rasterio.open(classes[0]) as ds, rasterio.open(served / "scene.tif") as src:
        assert ds.crs == src.crs and ds.transform == src.transform


def test_stac_item_with_asset(served: Path, tiny_models: dict[str, Path], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with serve_files(served) as srv:
        item = _stac_item(tmp_path / "item.json", srv.url("scene.tif"), asset="data")
        code, text = run_cli(["segment", str(item), "--asset", "data", "-m", str(tiny_models["sam"]),
                              "--box", "10,10,200,200", "--out", str(tmp_path / "o.tif")], monkeypatch, capsys)
        assert code == 0, text
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.crs.to_epsg() == 32616


def test_404_and_hang_exit_2(served: Path, tiny_models: dict[str, Path], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAMADAPT_HTTP_TIMEOUT", "1")
    with serve_files(served) as srv:
        args = ["-m", str(tiny_models["sam"]), "--box", "1,1,9,9", "--out", str(tmp_path / "o.png")]
        code, text = run_cli(["segment", srv.url("nope.tif"), *args], monkeypatch, capsys)
        assert code == 2 and text.count("error:") == 1 and "HTTP 404" in text, text
        srv.fail = "hang"
        code, text = run_cli(["segment", srv.url("scene.tif"), *args], monkeypatch, capsys)
        assert code == 2 and "did not answer within 1 s" in text, text
