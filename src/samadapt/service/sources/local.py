"""A local GeoTIFF / COG served as an imagery source, on Earth or another body.

Windows are read in the raster's own pixel grid (no resampling), so what the model sees is the
data itself. Lng/lat are those of the raster's own body: EPSG:4326 on Earth, the geodetic CRS of
the raster's CRS elsewhere (a Mars raster stays on Mars; PROJ refuses transforms between bodies).
Base-map tiles are rendered into the body's spherical-mercator grid, built on that same geodetic
CRS, so the page's default map projection places them where the API's lng/lat say.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from samadapt.errors import InputFileError
from samadapt.service.frames import TILE_SIZE, Frame, RasterFrame
from samadapt.service.sources.base import FetchError, Source, check_window, encode_png

if TYPE_CHECKING:
    import pyproj
    import rasterio.io

log = logging.getLogger("samadapt.service")

#: Mean radius (m) -> body, for rasters whose ellipsoid name does not say which body it is.
_RADII = {"Mars": 3_396_190.0, "Moon": 1_737_400.0, "Mercury": 2_440_530.0, "Venus": 6_051_800.0,
          "Ceres": 470_000.0, "Vesta": 255_000.0}
_NO_NAME = {"unknown", "unnamed", "undefined", "not", "user", "custom", "sphere", "ellipse"}


def body_name(crs: pyproj.CRS) -> str:
    """Name of the body a pyproj CRS is on: "Earth", "Mars", "Moon", ... from its ellipsoid.

    Earth-sized ellipsoids (semi-major axis 6350-6400 km) are "Earth" whatever their name;
    others are named by the first word of the ellipsoid or datum name ("Mars (2015) - Sphere"
    -> "Mars"), else by the nearest known radius.
    """
    ellipsoid = crs.ellipsoid
    radius = float(ellipsoid.semi_major_metre) if ellipsoid is not None else float("nan")
    if 6_350_000 <= radius <= 6_400_000:
        return "Earth"
    for text in (ellipsoid.name if ellipsoid is not None else "", crs.datum.name if crs.datum else ""):
        word = re.match(r"\s*([A-Za-z]+)", text or "")
        if word and word.group(1).lower() not in _NO_NAME:
            return word.group(1).title()
    if math.isfinite(radius):
        name, known = min(_RADII.items(), key=lambda kv: abs(kv[1] - radius))
        if abs(known - radius) / known < 0.01:
            return name
    return f"unknown body (radius {radius:.0f} m)"


def _lnglat_crs(crs: Any, body: str) -> str:
    """The lat/lng CRS text of a raster's body: EPSG:4326 on Earth, else an authority code or WKT."""
    if body == "Earth":
        return "EPSG:4326"
    geodetic = crs.geodetic_crs
    for kwargs in ({}, {"min_confidence": 25}):
        auth = geodetic.to_authority(**kwargs)
        if auth:
            return ":".join(auth)
    return geodetic.to_wkt()


def _mercator_crs(crs: Any, body: str) -> tuple[str, float]:
    """(WKT, sphere radius) of the body's pseudo-mercator on the raster's own geodetic CRS."""
    from pyproj import CRS
    from pyproj.crs import ProjectedCRS

    if body == "Earth":
        return CRS("EPSG:3857").to_wkt(), 6_378_137.0
    conversion = CRS("EPSG:3857").coordinate_operation  # "Popular Visualisation Pseudo-Mercator"
    merc = ProjectedCRS(conversion=conversion, geodetic_crs=crs.geodetic_crs, name=f"{body} pseudo-mercator")
    return merc.to_wkt(), float(crs.ellipsoid.semi_major_metre)


class LocalSource(Source):
    """A georeferenced raster file served by name.

    Bands: the first three, or the first repeated when there are fewer. Non-uint8 data is
    scaled to uint8 with 2-98 % limits computed once for the whole raster, so every window
    is stretched alike; nodata and masked pixels become 0.

    Args:
        name: source name.
        path: GeoTIFF / COG (anything GDAL reads) with a CRS.
        attribution: text the map shows.
        min_zoom, max_zoom: zooms accepted (the frame is the native grid at any zoom).

    Raises:
        InputFileError: the file is missing, unreadable or has no CRS.
    """

    kind = "local"

    def __init__(self, name: str, path: str | Path, *, attribution: str = "", min_zoom: int = 0,
                 max_zoom: int = 24) -> None:
        from pyproj import CRS

        from samadapt.imagery.sources import open_source, resolve_source
        from samadapt.imagery.windows import bands_for

        try:
            self.source = resolve_source(path)  # a file, https:// or s3:// URL, /vsi* path or STAC item
        except InputFileError as exc:
            raise InputFileError(f"source {name!r}: cannot read {path} ({exc})") from None
        self.name, self.attribution = name, attribution
        self.path: Path | str = self.source.local if self.source.local is not None else self.source.text
        self.min_zoom, self.max_zoom = min_zoom, max_zoom
        try:
            with open_source(self.source) as ds:
                if ds.crs is None:
                    raise InputFileError(f"source {name!r}: {self.path} has no CRS; serve georeferenced rasters only")
                self.width, self.height, self.count = ds.width, ds.height, ds.count
                self.bands = bands_for(ds, None)
                self.transform = ds.transform
                self.raster_crs = ds.crs.to_wkt()
                native_bounds = tuple(ds.bounds)
        except InputFileError as exc:
            raise InputFileError(f"source {name!r}: cannot read {self.path} as a raster ({exc})") from None
        crs = CRS.from_wkt(self.raster_crs)
        if crs.geodetic_crs is None or crs.ellipsoid is None:  # an engineering or local CRS: no body to map on
            raise InputFileError(f"source {name!r}: the CRS of {self.path} is tied to no ellipsoid (an engineering "
                                 "or local CRS), so it cannot be placed on a web map; reproject it to a geographic "
                                 "or projected CRS first")
        self.body = body_name(crs)
        self.crs = _lnglat_crs(crs, self.body)
        self._merc_wkt, self._radius = _mercator_crs(crs, self.body)
        self._native_bounds = native_bounds
        self._limits: np.ndarray | None = None
        self._limits_ready = False
        self._lock = threading.Lock()
        self._bounds = self._lnglat_bounds()
        self._merc_bounds = self._bounds_in(self._merc_wkt)

    def _bounds_in(self, dst: str) -> tuple[float, float, float, float]:
        from rasterio.warp import transform_bounds

        return tuple(transform_bounds(self.raster_crs, dst, *self._native_bounds, densify_pts=21))

    def _lnglat_bounds(self) -> list[list[float]]:
        west, south, east, north = self._bounds_in(self.crs)
        return [[south, west], [north, east]]

    def bounds_lnglat(self) -> list[list[float]]:
        return [list(p) for p in self._bounds]

    def _frame(self, zoom: int) -> Frame:
        return RasterFrame(self.name, zoom, self.body, self.crs, (0, 0, self.width, self.height),
                           raster_crs=self.raster_crs, transform=tuple(self.transform)[:6])

    def limits(self, ds: rasterio.io.DatasetReader) -> np.ndarray | None:
        """Raster-wide (C, 2) stretch limits, computed on first use; None for uint8 data."""
        from samadapt.imagery.windows import raster_limits

        with self._lock:
            if not self._limits_ready:
                self._limits = raster_limits(ds, self.bands)
                self._limits_ready = True
            return self._limits

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A file damaged, cut short or removed since the server started: a 502 naming the source, not the path."""
        from rasterio.errors import RasterioIOError

        from samadapt.imagery.sources import RemoteSourceError, remote_read_error

        try:
            yield
        except RemoteSourceError as exc:
            log.warning("source %r: reading %s failed: %s", self.name, self.path, exc)
            raise FetchError(f"source {self.name!r}: {exc}") from None
        except (RasterioIOError, InputFileError) as exc:
            remote = remote_read_error(self.source.gdal_path, exc)
            if remote is not None:
                raise FetchError(f"source {self.name!r}: {remote}") from None
            log.warning("source %r: reading %s failed: %s", self.name, self.path, exc)
            raise FetchError(f"source {self.name!r}: its raster file is damaged, truncated or gone, so this part "
                             "could not be read (the server log has GDAL's reason)") from None

    def read_window(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Synchronous :meth:`read`: (h, w, 3) uint8 of pixel window (x0, y0, x1, y1), 0 outside."""
        from rasterio.windows import Window

        from samadapt.imagery.sources import open_source
        from samadapt.imagery.windows import read_tile

        x0, y0, x1, y1 = check_window(window)
        out = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, self.height)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        with self._reading(), open_source(self.source) as ds:
            pixels, _ = read_tile(ds, Window(cx0, cy0, cx1 - cx0, cy1 - cy0), self.bands, self.limits(ds))
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = pixels
        return out

    async def read(self, frame: Frame, window: tuple[int, int, int, int],
                   client: httpx.AsyncClient | None) -> np.ndarray:
        self._check_frame(frame)
        return await asyncio.to_thread(self.read_window, window)

    async def tile_png(self, z: int, x: int, y: int, client: httpx.AsyncClient | None) -> bytes:
        self._check_tile(z, x, y)
        return await asyncio.to_thread(self.render_tile, z, x, y)

    def render_tile(self, z: int, x: int, y: int) -> bytes:
        """PNG (RGBA, transparent off the raster) of XYZ tile z/x/y on the body's spherical mercator."""
        from affine import Affine
        from rasterio.enums import Resampling
        from rasterio.transform import from_origin
        from rasterio.warp import reproject, transform_bounds
        from rasterio.windows import Window

        from samadapt.imagery.sources import open_source
        from samadapt.imagery.windows import read_tile

        self._check_tile(z, x, y)
        half = math.pi * self._radius
        size = 2 * half / 2**z
        left, top = -half + x * size, half - y * size
        mx0, my0, mx1, my1 = self._merc_bounds
        ix0, iy0, ix1, iy1 = max(left, mx0), max(top - size, my0), min(left + size, mx1), min(top, my1)
        rgba = np.zeros((4, TILE_SIZE, TILE_SIZE), dtype=np.uint8)
        if ix1 <= ix0 or iy1 <= iy0:
            return encode_png(np.moveaxis(rgba, 0, -1))
        # The part of the raster under the tile, read at about the tile's resolution.
        sx0, sy0, sx1, sy1 = transform_bounds(self._merc_wkt, self.raster_crs, ix0, iy0, ix1, iy1, densify_pts=21)
        cols, rows = ~self.transform * (np.array([sx0, sx1, sx0, sx1]), np.array([sy0, sy0, sy1, sy1]))
        c0, r0 = max(0, math.floor(np.min(cols)) - 1), max(0, math.floor(np.min(rows)) - 1)
        c1, r1 = min(self.width, math.ceil(np.max(cols)) + 1), min(self.height, math.ceil(np.max(rows)) + 1)
        if c1 <= c0 or r1 <= r0:
            return encode_png(np.moveaxis(rgba, 0, -1))
        out_px = max((ix1 - ix0), (iy1 - iy0)) / size * TILE_SIZE
        factor = max(1.0, max(c1 - c0, r1 - r0) / max(out_px, 1.0) / 2.0)  # keep 2x oversampling
        shape = (max(1, round((r1 - r0) / factor)), max(1, round((c1 - c0) / factor)))
        with self._reading(), open_source(self.source) as ds:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            pixels, valid = read_tile(ds, window, self.bands, self.limits(ds),
                                      out_shape=None if factor == 1.0 else shape)
        src = np.concatenate([np.moveaxis(pixels, -1, 0), (valid * 255).astype(np.uint8)[None]], axis=0)
        src_transform = self.transform * Affine.translation(c0, r0) * Affine.scale(
            (c1 - c0) / src.shape[2], (r1 - r0) / src.shape[1])
        reproject(src, rgba, src_transform=src_transform, src_crs=self.raster_crs,
                  dst_transform=from_origin(left, top, size / TILE_SIZE, size / TILE_SIZE),
                  dst_crs=self._merc_wkt, resampling=Resampling.bilinear, src_nodata=None, dst_nodata=None)
        return encode_png(np.moveaxis(rgba, 0, -1))
