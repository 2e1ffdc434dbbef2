"""Test helpers for the service: a local XYZ tile server and GeoTIFFs with a bright disc.

Import with ``from helpers.tileserver import serve_tiles, write_disc_geotiff`` (``tests`` is on
the pytest path). Every tile and raster shows a bright disc (value 230) centred on a known
lng/lat over a darker, position-dependent background, so a test can check that imagery is
stitched and placed right and that a polygon lies where it should.

    with serve_tiles(lng=10.0, lat=45.0, radius_deg=0.05) as srv:
        srv.url_template              # "http://127.0.0.1:PORT/{z}/{x}/{y}.png"
        srv.requests                  # paths requested so far, e.g. ["/12/2161/1467.png"]
        srv.fail = "500"              # or "hang", "garbage", "slow", "redirect" (to srv.redirect_to), None
        srv.fail_only = {(12, 2161, 1467)}   # fail just these tiles (None: all)
        srv.max_active                # most requests answered at once
        srv.tile(z, x, y), srv.mosaic(z, x0, y0, x1, y1)   # what the server sends, as arrays
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from helpers.rasters import write_geotiff

TILE = 256
DISC_VALUE = 230
_PATH = re.compile(r"^/(\d+)/(\d+)/(\d+)\.png$")


def lnglat_to_world(lng: float, lat: float, zoom: int) -> tuple[float, float]:
    """Global spherical-mercator pixel (x, y) of lng/lat at ``zoom`` (256 px tiles)."""
    scale = TILE * 2.0**zoom
    return (lng + 180.0) / 360.0 * scale, (1.0 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2.0 * scale


def disc_image(lng: np.ndarray, lat: np.ndarray, center: tuple[float, float], radius_deg: float,
               gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: DISC_VALUE inside the disc, a pattern of the integer pixel ids gx, gy elsewhere.

    The disc is round on a local equirectangular scale: (dlng * cos(lat0))**2 + dlat**2 < r**2.
    """
    lng0, lat0 = center
    inside = ((lng - lng0) * np.cos(np.radians(lat0))) ** 2 + (lat - lat0) ** 2 < radius_deg**2
    img = np.empty((*lng.shape, 3), dtype=np.uint8)
    img[..., 0] = 40 + (gx * 7 + gy * 3) % 61
    img[..., 1] = 40 + (gx * 5 + gy * 11) % 67
    img[..., 2] = 40 + (gx // 16 + gy // 16) % 2 * 60
    img[inside] = DISC_VALUE
    return img


def make_tile(z: int, x: int, y: int, center: tuple[float, float], radius_deg: float) -> np.ndarray:
    """(256, 256, 3) uint8 tile z/x/y: each pixel coloured from the lng/lat of its centre."""
    scale = TILE * 2.0**z
    gy, gx = np.mgrid[y * TILE:(y + 1) * TILE, x * TILE:(x + 1) * TILE]
    lng = (gx + 0.5) / scale * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * (gy + 0.5) / scale))))
    return disc_image(lng, lat, center, radius_deg, gx, gy)


@lru_cache(maxsize=1024)
def tile_png(z: int, x: int, y: int, center: tuple[float, float], radius_deg: float) -> bytes:
    """PNG bytes of :func:`make_tile` (cached: tests ask for the same tiles again and again)."""
    return png_bytes(make_tile(z, x, y, center, radius_deg))


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class TileServer:
    """State of a running :func:`serve_tiles` server; tests may change ``fail``/``delay_s`` at any time."""

    url: str
    center: tuple[float, float]
    radius_deg: float
    requests: list[str] = field(default_factory=list)
    fail: Literal["500", "hang", "garbage", "slow", "redirect"] | None = None
    redirect_to: str = ""  # for fail="redirect": the Location answered (302)
    fail_only: set[tuple[int, int, int]] | None = None
    delay_s: float = 0.5  # for fail="slow": answer after this long
    stop: threading.Event = field(default_factory=threading.Event)
    active: int = 0  # requests being answered now
    max_active: int = 0  # most requests answered at once so far
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url_template(self) -> str:
        return self.url + "/{z}/{x}/{y}.png"

    def tile_requests(self) -> list[tuple[int, int, int]]:
        """(z, x, y) of every tile requested so far, in order."""
        return [tuple(int(v) for v in m.groups()) for p in self.requests if (m := _PATH.match(p))]  # type: ignore[misc]

    def pixel(self, lng: float, lat: float, zoom: int) -> tuple[float, float]:
        """Global pixel (x, y) of lng/lat at ``zoom``."""
        return lnglat_to_world(lng, lat, zoom)

    def tile(self, z: int, x: int, y: int) -> np.ndarray:
        """The (256, 256, 3) tile the server sends for z/x/y."""
        return make_tile(z, x, y, self.center, self.radius_deg)

    def mosaic(self, z: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Global pixels [y0:y1, x0:x1] at ``zoom`` as the server's tiles would show them."""
        tiles = {(tx, ty): self.tile(z, tx, ty) for tx in range(x0 // TILE, (x1 - 1) // TILE + 1)
                 for ty in range(y0 // TILE, (y1 - 1) // TILE + 1)}
        out = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        for (tx, ty), t in tiles.items():
            for row in range(max(y0, ty * TILE), min(y1, (ty + 1) * TILE)):
                lo, hi = max(x0, tx * TILE), min(x1, (tx + 1) * TILE)
                out[row - y0, lo - x0:hi - x0] = t[row - ty * TILE, lo - tx * TILE:hi - tx * TILE]
        return out


def _handler(state: TileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str = "image/png") -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except ConnectionError:  # the client gave up (cancelled fetch): nothing to tell
                pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(self.path)
                state.active += 1
                state.max_active = max(state.max_active, state.active)
            try:
                self._answer()
            finally:
                with state.lock:
                    state.active -= 1

        def _answer(self) -> None:
            m = _PATH.match(self.path)
            if not m:
                self._send(404, b"not a tile", "text/plain")
                return
            z, x, y = (int(v) for v in m.groups())
            if not (0 <= x < 2**z and 0 <= y < 2**z):
                self._send(404, b"no such tile", "text/plain")
                return
            mode = state.fail if state.fail_only is None or (z, x, y) in state.fail_only else None
            if mode == "500":
                self._send(500, b"boom", "text/plain")
                return
            if mode == "hang":
                state.stop.wait(60)
                return
            if mode == "garbage":
                self._send(200, b"\x00not an image at all" * 20)
                return
            if mode == "redirect":
                self.send_response(302)
                self.send_header("Location", state.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "slow":
                state.stop.wait(state.delay_s)
            self._send(200, tile_png(z, x, y, state.center, state.radius_deg))

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog of 5 drops bursts of concurrent tile requests; the client then
    # waits a whole second for the SYN to be retransmitted, which looks like a hang.
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up mid-response is expected in failure tests


@contextmanager
def serve_tiles(lng: float = 10.0, lat: float = 45.0, radius_deg: float = 0.05) -> Iterator[TileServer]:
    """Serve generated XYZ PNG tiles on 127.0.0.1 (free port) in a background thread.

    Args:
        lng, lat: centre of the bright disc in degrees.
        radius_deg: disc radius in degrees of latitude (0.05 deg is about 36 px at zoom 10,
            146 px at zoom 12).

    Yields:
        The server state: ``url_template``, ``requests``, ``fail``, ``fail_only``, ``delay_s``.
    """
    state = TileServer(url="", center=(lng, lat), radius_deg=radius_deg)
    server = _Server(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()  # release hanging handlers
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class DiscRaster:
    """A GeoTIFF written by :func:`write_disc_geotiff`: where its disc is, in lng/lat and pixels."""

    path: Path
    lng: float
    lat: float
    col: float  # pixel coordinates of the disc centre (x right, y down, pixel edges)
    row: float
    radius_px: float
    crs: str  # the raster CRS as given (e.g. "EPSG:32632", "IAU_2015:49910")
    body: str


def write_disc_geotiff(path: str | Path, body: Literal["Earth", "Mars"] = "Earth", *, lng: float | None = None,
                       lat: float | None = None, size: tuple[int, int] = (300, 400), res: float | None = None,
                       radius_px: float = 30.0, dtype: str = "uint8", count: int = 3,
                       nodata: float | None = None) -> DiscRaster:
    """Write a small GeoTIFF with a bright disc centred on (lng, lat).

    Earth rasters are in the UTM zone of ``lng`` (EPSG:326xx, 2 m pixels by default); Mars ones in
    IAU_2015:49910 (Mars equirectangular, 50 m pixels). The disc centre is placed off the raster's
    middle, at pixel (0.4 * width, 0.45 * height). Non-uint8 dtypes scale values by 100 (so a stretch
    is needed); ``nodata`` marks a 10-pixel strip on the left.

    Args:
        path: file to write.
        body: "Earth" or "Mars".
        lng, lat: disc centre in degrees (defaults: 10, 45 on Earth; 137.4, -4.6 on Mars).
        size: (rows, cols).
        res: pixel size in metres.
        radius_px: disc radius in pixels.
        dtype: numpy dtype name of the bands.
        count: 1 or 3 bands.
        nodata: nodata value to declare and write on the left strip.
    """
    from pyproj import CRS, Transformer
    from rasterio.transform import from_origin

    path = Path(path)
    if body == "Earth":
        lng = 10.0 if lng is None else lng
        lat = 45.0 if lat is None else lat
        crs = f"EPSG:{32600 + int((lng + 180) // 6) + 1 if lat >= 0 else 32700 + int((lng + 180) // 6) + 1}"
        geo = CRS("EPSG:4326")
        res = 2.0 if res is None else res
    else:
        lng = 137.4 if lng is None else lng
        lat = -4.6 if lat is None else lat
        crs = "IAU_2015:49910"
        geo = CRS(crs).geodetic_crs
        res = 50.0 if res is None else res
    rows, cols = size
    col, row = 0.4 * cols, 0.45 * rows
    x, y = Transformer.from_crs(geo, CRS(crs), always_xy=True).transform(lng, lat)
    transform = from_origin(x - col * res, y + row * res, res, res)
    yy, xx = np.mgrid[:rows, :cols]
    img = disc_image(np.zeros((rows, cols)), np.zeros((rows, cols)), (0.0, 0.0), 0.0, xx, yy).astype(np.float64)
    img[(xx + 0.5 - col) ** 2 + (yy + 0.5 - row) ** 2 < radius_px**2] = DISC_VALUE
    data = np.moveaxis(img, 2, 0)[:count]
    if np.dtype(dtype) != np.uint8:
        data = data * 100.0
    data = data.astype(dtype)
    if nodata is not None:
        data[:, :, :10] = nodata
    write_geotiff(path, data, crs=crs, transform=transform, nodata=nodata)
    return DiscRaster(path, float(lng), float(lat), col, row, radius_px, crs, body)
