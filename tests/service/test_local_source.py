"""Local GeoTIFF sources on Earth (UTM) and Mars (IAU_2015:49910): frames, reads, base-map tiles."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import CRS
from rasterio.windows import Window

from helpers.rasters import write_geotiff
from helpers.tileserver import DISC_VALUE, DiscRaster, write_disc_geotiff
from samadapt.errors import InputFileError
from samadapt.service.sources import FetchError, LocalSource, SourceError, lnglat_to_world
from samadapt.service.sources.local import body_name


def read(src: LocalSource, zoom: int, window: tuple[int, int, int, int]) -> np.ndarray:
    return asyncio.run(src.read(src.frame(zoom), window, None))  # type: ignore[arg-type]


def tile(src: LocalSource, z: int, x: int, y: int) -> np.ndarray:
    png = asyncio.run(src.tile_png(z, x, y, None))  # type: ignore[arg-type]
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture(params=["Earth", "Mars"])
def disc(request: pytest.FixtureRequest, tmp_path: Path) -> DiscRaster:
    return write_disc_geotiff(tmp_path / f"{request.param}.tif", request.param)


def test_body_and_crs(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    frame = src.frame(14)
    assert (src.body, frame.body) == (disc.body, disc.body)
    if disc.body == "Earth":
        assert frame.crs == "EPSG:4326"
    else:
        # Mars lat/lng: the raster's own geodetic CRS, never Earth's.
        assert frame.crs != "EPSG:4326"
        assert CRS(frame.crs).ellipsoid.name.startswith("Mars")
    assert frame.bounds == (0, 0, 400, 300)
    assert src.describe()["body"] == disc.body


def test_disc_centre_maps_to_its_pixel(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    frame = src.frame(10)
    x, y = frame.to_pixel(disc.lng, disc.lat)
    assert abs(x - disc.col) < 1e-6 and abs(y - disc.row) < 1e-6
    lng, lat = frame.to_lnglat(np.array([disc.col, 0.0]), np.array([disc.row, 0.0]))
    assert abs(lng[0] - disc.lng) < 1e-9 and abs(lat[0] - disc.lat) < 1e-9
    pixels = read(src, 10, (0, 0, 400, 300))
    assert (pixels[int(y), int(x)] == DISC_VALUE).all()
    rows, cols = np.nonzero((pixels == DISC_VALUE).all(axis=2))
    assert abs(cols.mean() + 0.5 - x) < 0.5 and abs(rows.mean() + 0.5 - y) < 0.5


def test_window_equals_a_rasterio_read(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    window = (37, 21, 301, 250)
    pixels = read(src, 5, window)
    with rasterio.open(disc.path) as ds:
        expected = ds.read(window=Window(37, 21, 301 - 37, 250 - 21))
    np.testing.assert_array_equal(pixels, np.moveaxis(expected, 0, -1))


def test_window_past_the_edge_is_zero(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    pixels = read(src, 5, (-20, -10, 30, 40))
    assert pixels.shape == (50, 50, 3)
    assert not pixels[:10].any() and not pixels[:, :20].any()
    with rasterio.open(disc.path) as ds:
        np.testing.assert_array_equal(pixels[10:, 20:], np.moveaxis(ds.read(window=Window(0, 0, 30, 40)), 0, -1))
    assert not read(src, 5, (500, 0, 600, 10)).any()


def test_uint16_single_band_is_stretched_once_with_nodata_black(tmp_path: Path) -> None:
    disc = write_disc_geotiff(tmp_path / "u16.tif", dtype="uint16", count=1, nodata=0)
    src = LocalSource("local", disc.path)
    whole = read(src, 5, (0, 0, 400, 300))
    assert whole.dtype == np.uint8
    np.testing.assert_array_equal(whole[..., 0], whole[..., 1])
    np.testing.assert_array_equal(whole[..., 0], whole[..., 2])
    assert not whole[:, :10].any()  # the nodata strip
    assert whole[int(disc.row), int(disc.col), 0] == 255
    # The same pixel gets the same value whichever window it is read in (raster-wide limits).
    part = read(src, 5, (100, 100, 140, 130))
    np.testing.assert_array_equal(part, whole[100:130, 100:140])


def test_base_map_tile_shows_the_disc_where_its_lnglat_says(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    # Pick a zoom where the raster's pixels and the tile's pixels are about the same size.
    zoom = 15 if disc.body == "Earth" else 12
    gx, gy = lnglat_to_world(disc.lng, disc.lat, zoom)
    tx, ty = int(gx // 256), int(gy // 256)
    rgba = tile(src, zoom, tx, ty)
    assert rgba.shape == (256, 256, 4)
    px, py = gx - tx * 256, gy - ty * 256
    assert (rgba[int(py), int(px)] == (DISC_VALUE, DISC_VALUE, DISC_VALUE, 255)).all()
    bright = (rgba[..., 0] > 200) & (rgba[..., 3] == 255)
    rows, cols = np.nonzero(bright)
    inside = (abs(cols + 0.5 - px) < 256) & (abs(rows + 0.5 - py) < 256)
    assert inside.all() and bright.sum() > 100
    assert 40 < px < 216 and 40 < py < 216  # the whole disc is in this tile, so its centroid is its centre
    assert abs(cols.mean() + 0.5 - px) < 1.5 and abs(rows.mean() + 0.5 - py) < 1.5


def test_base_map_tile_off_the_raster_is_transparent(disc: DiscRaster) -> None:
    src = LocalSource("local", disc.path)
    gx, gy = lnglat_to_world(disc.lng, disc.lat, 14)
    far = tile(src, 14, int(gx // 256) + 50, int(gy // 256))  # 50 tiles east: off both rasters
    assert far.shape == (256, 256, 4) and not far[..., 3].any()
    with pytest.raises(SourceError, match="x and y run from 0 to 3"):
        tile(src, 2, 4, 0)


def test_earth_tile_edge_matches_the_raster_bounds(tmp_path: Path) -> None:
    disc = write_disc_geotiff(tmp_path / "e.tif")
    src = LocalSource("local", disc.path)
    (south, west), (north, east) = src.describe()["bounds"]
    zoom = 15
    gx0, gy0 = lnglat_to_world(west, north, zoom)
    gx1, gy1 = lnglat_to_world(east, south, zoom)
    tx, ty = int((gx0 + gx1) / 2 // 256), int((gy0 + gy1) / 2 // 256)
    alpha = tile(src, zoom, tx, ty)[..., 3] > 0
    rows, cols = np.nonzero(alpha)
    # The opaque part lies within the raster's lng/lat bounds (to a pixel).
    assert cols.min() + tx * 256 >= gx0 - 1.5 and cols.max() + tx * 256 <= gx1 + 1.5
    assert rows.min() + ty * 256 >= gy0 - 1.5 and rows.max() + ty * 256 <= gy1 + 1.5


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_unusable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read"):
        LocalSource("x", tmp_path / "missing.tif")
    plain = tmp_path / "plain.tif"
    write_geotiff(plain, np.zeros((1, 4, 4), np.uint8), crs=None, transform=None)
    with pytest.raises(InputFileError, match="has no CRS"):
        LocalSource("x", plain)
    site = tmp_path / "site.tif"  # a local engineering grid: a CRS, but on no body
    local = rasterio.crs.CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
                                      'AXIS["Northing",NORTH]]')
    write_geotiff(site, np.zeros((1, 8, 8), np.uint8), crs=local)
    with pytest.raises(InputFileError, match="tied to no ellipsoid"):
        LocalSource("x", site)


def test_a_damaged_file_is_a_fetch_error_naming_the_source_not_the_path(tmp_path: Path) -> None:
    disc = write_disc_geotiff(tmp_path / "e.tif", size=(600, 400))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(disc.path.read_bytes()[: disc.path.stat().st_size // 2])
    src = LocalSource("local", cut)  # the header is whole, so the source starts
    assert read(src, 15, (0, 0, 400, 50)).shape == (50, 400, 3)  # and the first rows are there
    damaged = "source 'local': its raster file is damaged, truncated or gone"
    with pytest.raises(FetchError, match=damaged) as caught:
        read(src, 15, (0, 500, 400, 600))
    assert str(tmp_path) not in str(caught.value)
    gx, gy = lnglat_to_world(disc.lng, disc.lat, 12)
    with pytest.raises(FetchError, match=damaged):
        tile(src, 12, int(gx // 256), int(gy // 256))


@pytest.mark.parametrize(("crs", "body"), [
    ("EPSG:32616", "Earth"), ("EPSG:4269", "Earth"), ("IAU_2015:49910", "Mars"), ("IAU_2015:30100", "Moon"),
    ("+proj=longlat +a=3396190 +b=3396190 +no_defs", "Mars"),
])
def test_body_name(crs: str, body: str) -> None:
    assert body_name(CRS(crs)) == body


def test_zoom_is_validated(tmp_path: Path) -> None:
    disc = write_disc_geotiff(tmp_path / "e.tif")
    src = LocalSource("local", disc.path, min_zoom=3, max_zoom=18)
    with pytest.raises(SourceError, match="outside source 'local'.s range 3-18"):
        src.frame(19)
    # The frame is the native grid whatever the zoom.
    assert src.frame(3).bounds == src.frame(18).bounds == (0, 0, 400, 300)


