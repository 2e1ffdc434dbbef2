"""XYZ tile sources against a local tile server: tile math, stitching, caching, failures."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers.tileserver import DISC_VALUE, TileServer, serve_tiles, write_disc_geotiff
from samadapt.errors import InputError, SamadaptError
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import (
    TILE_SIZE,
    FetchError,
    LocalSource,
    SourceError,
    XYZSource,
    build_sources,
    lnglat_to_world,
    lookup_source,
)

LNG, LAT, ZOOM = 10.0, 45.0, 12


def run(coro_fn: Any, *args: Any) -> Any:
    """Run ``coro_fn(client, *args)`` with a fresh httpx client in a fresh event loop."""
    async def main() -> Any:
        async with httpx.AsyncClient() as client:
            return await coro_fn(client, *args)
    return asyncio.run(main())


@pytest.fixture
def srv() -> Any:
    with serve_tiles(lng=LNG, lat=LAT, radius_deg=0.05) as server:
        yield server


def source(srv: TileServer, **kwargs: Any) -> XYZSource:
    kwargs.setdefault("timeout_s", 10.0)
    return XYZSource("test", srv.url_template, max_zoom=18, **kwargs)


def window_around(frame: Any, lng: float, lat: float, half_w: int, half_h: int) -> tuple[int, int, int, int]:
    x, y = frame.to_pixel(lng, lat)
    return int(x) - half_w, int(y) - half_h, int(x) + half_w, int(y) + half_h


@pytest.mark.parametrize("zoom", [0, 3, 12, 19])
def test_mercator_round_trip(zoom: int) -> None:
    frame = XYZSource("t", "http://127.0.0.1:9/{z}/{x}/{y}.png", max_zoom=19).frame(zoom)
    lng = np.array([-179.9, -73.98, 0.0, 10.0, 137.4, 179.9])
    lat = np.array([-85.0, 40.75, 0.0, 45.0, -4.6, 85.0])
    x, y = frame.to_pixel(lng, lat)
    back_lng, back_lat = frame.to_lnglat(x, y)
    np.testing.assert_allclose(back_lng, lng, atol=1e-9)
    np.testing.assert_allclose(back_lat, lat, atol=1e-9)
    assert frame.bounds == (0, 0, TILE_SIZE * 2**zoom, TILE_SIZE * 2**zoom)
    assert (frame.body, frame.crs, frame.zoom) == ("Earth", "EPSG:4326", zoom)


def test_mercator_known_values() -> None:
    frame = XYZSource("t", "http://127.0.0.1:9/{z}/{x}/{y}.png").frame(0)
    assert np.allclose(frame.to_pixel(0.0, 0.0), (128.0, 128.0))
    assert np.allclose(frame.to_pixel(-180.0, 85.05112877980659), (0.0, 0.0))
    assert np.allclose(frame.to_pixel(180.0, -85.05112877980659), (256.0, 256.0))
    # Zoom 1 doubles the pixel coordinates; the left edge of tile x=1 is the prime meridian.
    assert np.allclose(lnglat_to_world(0.0, 0.0, 1), (256.0, 256.0))
    assert np.allclose(frame.to_lnglat(64.0, 128.0), (-90.0, 0.0))


def test_window_across_tiles_equals_the_mosaic(srv: TileServer) -> None:
    src = source(srv)
    frame = src.frame(ZOOM)
    window = window_around(frame, LNG, LAT, 300, 200)  # spans 3 x 3 tiles
    pixels = run(lambda c: src.read(frame, window, c))
    assert pixels.shape == (400, 600, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, srv.mosaic(ZOOM, *window))
    assert len(srv.tile_requests()) == 9


def test_disc_is_where_its_lnglat_says(srv: TileServer) -> None:
    src = source(srv)
    frame = src.frame(ZOOM)
    window = window_around(frame, LNG, LAT, 256, 256)
    pixels = run(lambda c: src.read(frame, window, c))
    cx, cy = (float(v) for v in frame.to_pixel(LNG, LAT))
    rows, cols = np.nonzero((pixels == DISC_VALUE).all(axis=2))
    assert len(rows) > 1000
    # Pixel (c, r) covers [c, c+1): its centre is c + 0.5.
    assert abs(cols.mean() + 0.5 + window[0] - cx) < 1.0
    assert abs(rows.mean() + 0.5 + window[1] - cy) < 1.0
    # and back: the disc's pixel centre converts to the disc's lng/lat
    lng, lat = frame.to_lnglat(cols.mean() + 0.5 + window[0], rows.mean() + 0.5 + window[1])
    assert abs(lng - LNG) < 1e-3 and abs(lat - LAT) < 1e-3


def test_window_outside_the_world_is_black(srv: TileServer) -> None:
    src = source(srv)
    frame = src.frame(1)
    pixels = run(lambda c: src.read(frame, (-50, -20, 100, 80), c))
    assert pixels.shape == (100, 150, 3)
    assert not pixels[:20].any() and not pixels[:, :50].any()
    np.testing.assert_array_equal(pixels[20:, 50:], srv.tile(1, 0, 0)[:80, :100])
    assert srv.tile_requests() == [(1, 0, 0)]
    with pytest.raises(SourceError, match="empty"):
        run(lambda c: src.read(frame, (10, 10, 10, 20), c))
    with pytest.raises(SourceError, match="too large"):
        run(lambda c: src.read(frame, (0, 0, 100_000, 100_000), c))
    assert len(srv.tile_requests()) == 1


def test_tiles_are_cached_across_reads_and_event_loops(srv: TileServer) -> None:
    src = source(srv)
    frame = src.frame(ZOOM)
    window = window_around(frame, LNG, LAT, 100, 100)
    first = run(lambda c: src.read(frame, window, c))
    n = len(srv.tile_requests())
    again = run(lambda c: src.read(frame, window, c))  # another asyncio.run: another loop
    assert len(srv.tile_requests()) == n
    np.testing.assert_array_equal(first, again)
    # Panning by a tile re-uses the tiles already fetched and fetches only the new ones.
    moved = (window[0] + TILE_SIZE, window[1], window[2] + TILE_SIZE, window[3])
    run(lambda c: src.read(frame, moved, c))
    new = srv.tile_requests()[n:]
    assert 0 < len(new) < n and not set(new) & set(srv.tile_requests()[:n])


def test_concurrency_is_bounded(srv: TileServer) -> None:
    srv.fail, srv.delay_s = "slow", 0.05
    src = source(srv, concurrency=2)
    frame = src.frame(ZOOM)
    pixels = run(lambda c: src.read(frame, window_around(frame, LNG, LAT, 300, 300), c))
    assert pixels.shape == (600, 600, 3)
    assert len(srv.tile_requests()) >= 9
    assert srv.max_active <= 2


@pytest.mark.parametrize(("mode", "reason"), [("500", "returned HTTP 500"), ("garbage", "is not an image")])
def test_failed_tile_raises_fetch_error(srv: TileServer, mode: str, reason: str) -> None:
    src = source(srv, timeout_s=10.0)
    frame = src.frame(ZOOM)
    window = window_around(frame, LNG, LAT, 300, 200)
    x, y = (int(v) // TILE_SIZE for v in frame.to_pixel(LNG, LAT))
    srv.fail, srv.fail_only = mode, {(ZOOM, x, y)}  # one bad tile among nine
    with pytest.raises(FetchError, match=rf"^tile http://127\.0\.0\.1:\d+/{ZOOM}/{x}/{y}\.png {reason}"):
        run(lambda c: src.read(frame, window, c))
    # The bad tile is not cached: once the server recovers, the same read succeeds.
    srv.fail = None
    pixels = run(lambda c: src.read(frame, window, c))
    np.testing.assert_array_equal(pixels, srv.mosaic(ZOOM, *window))


def test_redirects_to_another_server_are_not_followed(srv: TileServer) -> None:
    """Only configured sources are fetched: a 302 to another origin reaches nothing there."""
    src = source(srv)
    with serve_tiles(lng=LNG, lat=LAT) as elsewhere:
        srv.fail, srv.redirect_to = "redirect", elsewhere.url + "/3/4/2.png"
        with pytest.raises(FetchError, match="redirects to another server, which is not a configured source"):
            run(lambda c: src.tile_png(3, 4, 2, c))
        assert elsewhere.requests == []


def test_redirects_within_the_configured_server_are_followed(srv: TileServer) -> None:
    src = source(srv)
    srv.fail, srv.fail_only, srv.redirect_to = "redirect", {(3, 4, 2)}, srv.url + "/3/4/3.png"
    png = run(lambda c: src.tile_png(3, 4, 2, c))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), srv.tile(3, 4, 3))
    srv.fail_only, srv.redirect_to = None, srv.url + "/3/4/2.png"  # a loop
    with pytest.raises(FetchError, match="redirects more than 3 times"):
        run(lambda c: src.tile_png(3, 4, 5, c))


def test_a_remote_body_is_not_echoed(srv: TileServer) -> None:
    srv.fail = "garbage"
    with pytest.raises(FetchError) as err:
        run(lambda c: source(srv).tile_png(3, 4, 2, c))
    assert "not an image" in str(err.value) and "not an image at all" not in str(err.value)


def test_hanging_server_times_out(srv: TileServer) -> None:
    srv.fail = "hang"  # accepts the connection, never answers
    src = source(srv, timeout_s=0.5)
    frame = src.frame(ZOOM)
    with pytest.raises(FetchError, match=rf"^tile http://127\.0\.0\.1:\d+/{ZOOM}/\d+/\d+\.png timed out after 0\.5 s"):
        run(lambda c: src.read(frame, window_around(frame, LNG, LAT, 300, 200), c))
    srv.fail = None
    src.timeout_s = 10.0
    assert run(lambda c: src.read(frame, window_around(frame, LNG, LAT, 10, 10), c)).shape == (20, 20, 3)


def test_unreachable_server_raises_fetch_error() -> None:
    src = XYZSource("gone", "http://127.0.0.1:9/{z}/{x}/{y}.png", timeout_s=1.0)
    with pytest.raises(FetchError, match="could not be fetched"):
        run(lambda c: src.read(src.frame(2), (0, 0, 10, 10), c))
    assert issubclass(FetchError, SamadaptError) and not issubclass(FetchError, InputError)


def test_tile_png_passes_the_upstream_tile(srv: TileServer) -> None:
    src = source(srv)
    png = run(lambda c: src.tile_png(3, 4, 2, c))
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), srv.tile(3, 4, 2))
    with pytest.raises(SourceError, match="x and y run from 0 to 7"):
        run(lambda c: src.tile_png(3, 8, 0, c))
    with pytest.raises(SourceError, match="outside source 'test'"):
        run(lambda c: src.tile_png(19, 0, 0, c))


def test_jpeg_tiles_are_read_and_served_as_png(srv: TileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(srv)
    buf = io.BytesIO()
    Image.fromarray(srv.tile(2, 1, 1)).save(buf, format="JPEG", quality=95)

    async def fake_get(url: str, client: httpx.AsyncClient) -> bytes:
        return buf.getvalue()

    monkeypatch.setattr(src, "_get", fake_get)
    png = run(lambda c: src.tile_png(2, 1, 1, c))
    assert png.startswith(b"\x89PNG")
    diff = np.abs(np.asarray(Image.open(io.BytesIO(png))).astype(int) - srv.tile(2, 1, 1).astype(int))
    assert diff.mean() < 8


def test_zoom_outside_range_is_a_source_error() -> None:
    src = XYZSource("osm", "https://tile.example.org/{z}/{x}/{y}.png", min_zoom=2, max_zoom=5)
    for zoom in (1, 6, -1):
        with pytest.raises(SourceError, match=rf"zoom {zoom} is outside source 'osm'.s range 2-5"):
            src.frame(zoom)
    assert issubclass(SourceError, InputError)


def test_urls_come_only_from_the_configured_template() -> None:
    src = XYZSource("s", "https://{s}.tiles.example.org/base/{z}/{y}/{x}.png", subdomains=["a", "b"])
    assert src.tile_url(5, 3, 7) == "https://a.tiles.example.org/base/5/7/3.png"
    assert src.tile_url(5, 4, 7) == "https://b.tiles.example.org/base/5/7/4.png"
    sources = build_sources(ServiceSettings())
    assert lookup_source(sources, "OpenStreetMap").kind == "xyz"
    with pytest.raises(SourceError, match=r"unknown source 'http://evil\.example/\{z\}'; configured sources are \["):
        lookup_source(sources, "http://evil.example/{z}")


def test_build_sources_and_describe(tmp_path: Any) -> None:
    raster = write_disc_geotiff(tmp_path / "earth.tif")
    settings = ServiceSettings(sources={
        "tiles": {"type": "xyz", "url": "http://127.0.0.1:9/{z}/{x}/{y}.png", "max_zoom": 15, "attribution": "me"},
        "local": {"type": "local", "path": str(raster.path)},
    }, default_source="tiles", fetch_timeout_s=3, tile_concurrency=3)
    sources = build_sources(settings)
    tiles, local = sources["tiles"], sources["local"]
    assert isinstance(tiles, XYZSource) and isinstance(local, LocalSource)
    assert (tiles.timeout_s, tiles.concurrency) == (3.0, 3)
    assert tiles.describe() == {
        "name": "tiles", "kind": "xyz", "body": "Earth", "crs": "EPSG:4326", "min_zoom": 0, "max_zoom": 15,
        "attribution": "me", "tiles": "/tiles/tiles/{z}/{x}/{y}.png", "bounds": None,
    }
    (south, west), (north, east) = local.describe()["bounds"]
    assert south < raster.lat < north and west < raster.lng < east
