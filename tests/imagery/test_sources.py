"""Remote, virtual, STAC and planetary sources: one resolver, read by window, with CRS, nodata and scale."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from helpers.httpfiles import serve_files
from samadapt.errors import InputError, InputFileError
from samadapt.imagery.read import read_image
from samadapt.imagery.sources import RemoteSourceError, resolve_source, safe_name

MARS = "+proj=eqc +R=3396190 +units=m +no_defs"
UTM = from_origin(500000.0, 4000000.0, 1.0, 1.0)


def write_cog(path: Path, size: int = 4096) -> Path:
    """A tiled, compressed 3-band COG of noise, ``size`` pixels square, in UTM."""
    data = (np.random.default_rng(0).random((3, size, size)) * 255).astype("uint8")
    with rasterio.open(path, "w", driver="COG", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32616",
                       transform=UTM, blocksize=256, compress="deflate") as ds:
        ds.write(data)
    return path


@pytest.fixture(scope="module")
def cog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    write_cog(root / "scene.tif")
    return root


def test_url_is_read_by_window_with_fewer_bytes_than_the_file(cog_dir: Path) -> None:
    with serve_files(cog_dir) as srv:
        geo = read_image(srv.url("scene.tif"), window=Window(1000, 2000, 256, 256))
        assert srv.ranges, "GDAL must read the COG with range requests"
        assert srv.bytes_served < (cog_dir / "scene.tif").stat().st_size / 4
    assert geo.crs == rasterio.crs.CRS.from_epsg(32616)
    assert geo.transform == UTM * rasterio.Affine.translation(1000, 2000)
    assert geo.pixels.shape == (256, 256, 3)


def test_url_name_is_a_sane_local_file_name() -> None:
    assert safe_name("https://host/a/b%20c.tif?sig=1&x=/y") == "b_c.tif"
    assert safe_name("https://host/") == "raster"
    assert resolve_source("s3://bucket/key/scene.tif").gdal_path == "/vsis3/bucket/key/scene.tif"


def test_404_and_403_give_one_sentence(cog_dir: Path) -> None:
    with serve_files(cog_dir) as srv:
        with pytest.raises(RemoteSourceError, match="HTTP 404"):
            read_image(srv.url("missing.tif"))
        srv.fail = "403"
        with pytest.raises(RemoteSourceError, match="HTTP 403"):
            read_image(srv.url("scene.tif"))


def test_a_hanging_server_times_out(cog_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMADAPT_HTTP_TIMEOUT", "1")
    with serve_files(cog_dir) as srv:
        srv.fail = "hang"
        with pytest.raises(RemoteSourceError, match="did not answer within 1 s"):
            read_image(srv.url("hang.tif"))


def test_bad_timeout_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMADAPT_HTTP_TIMEOUT", "soon")
    with pytest.raises(InputError, match="SAMADAPT_HTTP_TIMEOUT"):
        read_image("https://127.0.0.1:9/x.tif")


def test_vsizip_path(tmp_path: Path) -> None:
    tif = tmp_path / "scene.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint8", crs="EPSG:32616",
                       transform=UTM) as ds:
        ds.write(np.arange(32 * 32, dtype="uint8").reshape(1, 32, 32))
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tif, "inner/scene.tif")
    source = resolve_source(f"/vsizip/{archive}/inner/scene.tif")
    assert source.name == "scene.tif"
    geo = read_image(source.gdal_path)
    assert geo.crs == rasterio.crs.CRS.from_epsg(32616) and geo.transform == UTM


def _stac_item(path: Path, href: str, *, asset: str = "image", proj: bool = False) -> Path:
    item = pystac.Item("scene-1", geometry=None, bbox=None, datetime=None,
                       properties={"start_datetime": "2020-01-01T00:00:00Z", "end_datetime": "2020-01-02T00:00:00Z"})
    item.add_asset(asset, pystac.Asset(href, media_type=pystac.MediaType.COG))
    item.add_asset("thumbnail", pystac.Asset("thumb.png", media_type=pystac.MediaType.PNG))
    if proj:
        item.assets[asset].extra_fields.update({"proj:code": "EPSG:32616", "proj:transform": list(UTM)[:6],
                                                "raster:bands": [{"nodata": 7}]})
    item.save_object(dest_href=str(path), include_self_link=False)
    return path


def test_stac_item_asset_default_and_explicit(cog_dir: Path, tmp_path: Path) -> None:
    with serve_files(cog_dir) as srv:
        item = _stac_item(tmp_path / "item.json", srv.url("scene.tif"))
        source = resolve_source(item)  # no "visual": the first COG asset
        assert source.name == "scene-1.tif" and source.remote
        geo = read_image(item, asset="image", window=Window(0, 0, 64, 64))
        assert geo.crs == rasterio.crs.CRS.from_epsg(32616)
        with pytest.raises(InputError, match="no asset 'nope'"):
            resolve_source(item, asset="nope")
    with pytest.raises(InputError, match="not a STAC item"):
        resolve_source(cog_dir / "scene.tif", asset="visual")


def test_stac_projection_and_nodata_fill_what_the_raster_lacks(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    data = np.full((1, 16, 16), 50, dtype="uint8")
    data[0, :2, :2] = 7
    with rasterio.open(plain, "w", driver="GTiff", width=16, height=16, count=1, dtype="uint8") as ds:
        ds.write(data)
    item = _stac_item(tmp_path / "item.json", "plain.tif", asset="visual", proj=True)
    geo = read_image(item)
    assert geo.crs == rasterio.crs.CRS.from_epsg(32616)
    assert geo.transform == UTM
    assert geo.nodata == 7 and not geo.valid[:2, :2].any() and geo.valid[2:, 2:].all()


PLANETARY = [("JP2OpenJPEG", "scene.jp2", "uint16", {"QUALITY": "100", "REVERSIBLE": "YES"}),
             ("ISIS3", "scene.cub", "int16", {}),
             ("PDS4", "scene.xml", "int16", {})]


@pytest.mark.parametrize(("driver", "name", "dtype", "options"), PLANETARY, ids=[p[0] for p in PLANETARY])
def test_planetary_formats_keep_mars_crs_nodata_and_scale(tmp_path: Path, driver: str, name: str, dtype: str,
                                                         options: dict[str, str]) -> None:
    with rasterio.Env() as env:
        if driver not in env.drivers():
            pytest.skip(f"the installed GDAL has no {driver} driver")
    nodata = 0 if dtype == "uint16" else -32768
    data = np.tile(np.arange(64, dtype=dtype) + 10, (64, 1))[None]
    data[0, :4, :4] = nodata
    transform = from_origin(100000.0, 200000.0, 25.0, 25.0)
    with rasterio.open(tmp_path / name, "w", driver=driver, width=64, height=64, count=1, dtype=dtype, crs=MARS,
                       transform=transform, nodata=nodata, **options) as ds:
        ds.scales, ds.offsets = (-0.5,), (100.0,)  # physical = 100 - raw / 2: brighter to the left
        ds.write(data)
    geo = read_image(tmp_path / name)
    assert geo.crs is not None and geo.crs.to_dict().get("R") == 3396190
    assert geo.transform == transform and geo.nodata == nodata
    assert not geo.valid[:4, :4].any() and geo.valid[4:, :].all()
    row = geo.pixels[10, :, 0].astype(int)
    assert row[4] > row[60], "scale and offset must be applied before the stretch"


def test_isis3_special_pixels_are_invalid(tmp_path: Path) -> None:
    with rasterio.Env() as env:
        if "ISIS3" not in env.drivers():
            pytest.skip("the installed GDAL has no ISIS3 driver")
    data = np.full((1, 16, 16), 100, dtype="int16")
    data[0, 0, :5] = [-32768, -32767, -32766, -32765, -32764]  # NULL, LRS, LIS, HIS, HRS
    with rasterio.open(tmp_path / "s.cub", "w", driver="ISIS3", width=16, height=16, count=1, dtype="int16",
                       crs=MARS, transform=from_origin(0, 0, 1, 1), nodata=-32768) as ds:
        ds.write(data)
    geo = read_image(tmp_path / "s.cub")
    assert not geo.valid[0, :5].any() and geo.valid[1:].all()


def test_missing_local_file() -> None:
    with pytest.raises(InputFileError, match="not found"):
        resolve_source("nope/scene.tif")


def test_service_local_source_reads_a_url(cog_dir: Path) -> None:
    from samadapt.service.sources.local import LocalSource

    with serve_files(cog_dir) as srv:
        source = LocalSource("remote", srv.url("scene.tif"))
        assert (source.width, source.height) == (4096, 4096)
        assert source.read_window((0, 0, 64, 64)).shape == (64, 64, 3)
        assert srv.bytes_served < (cog_dir / "scene.tif").stat().st_size
        with pytest.raises(InputFileError, match="HTTP 404"):
            LocalSource("gone", srv.url("gone.tif"))
