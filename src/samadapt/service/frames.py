"""Frames: the pixel grids the service's sources read imagery in, and their lng/lat conversions.

For an XYZ tile server the frame is the global spherical-mercator pixel grid of one zoom
(256 px tiles); for a local raster it is the raster's own pixel grid. A frame converts between
its pixels and the lng/lat of the source's body (Earth, Mars, ...), so prompts and polygons
travel in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyproj
    from numpy.typing import ArrayLike

TILE_SIZE = 256
#: Latitude where the spherical-mercator square ends (y = 0 and y = 256 * 2**z).
MAX_LAT = 85.05112877980659


def lnglat_to_world(lng: ArrayLike, lat: ArrayLike, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical-mercator global pixel coordinates (x right, y down) of lng/lat in degrees at ``zoom``.

    Latitudes are clipped to +-MAX_LAT, where the square map ends.
    """
    scale = TILE_SIZE * 2.0**zoom
    lng_deg = np.asarray(lng, dtype=np.float64)
    lat_rad = np.radians(np.clip(np.asarray(lat, dtype=np.float64), -MAX_LAT, MAX_LAT))
    return (lng_deg + 180.0) / 360.0 * scale, (1.0 - np.arcsinh(np.tan(lat_rad)) / np.pi) / 2.0 * scale


def world_to_lnglat(x: ArrayLike, y: ArrayLike, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`lnglat_to_world`: lng/lat in degrees of global pixel coordinates."""
    scale = TILE_SIZE * 2.0**zoom
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    return xs / scale * 360.0 - 180.0, np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * ys / scale))))


@dataclass(frozen=True)
class Frame:
    """The pixel grid a source's imagery is read in, at one zoom.

    Pixel (c, r) covers [c, c+1) x [r, r+1); x grows right, y down. Subclasses say how
    pixels map to lng/lat; frames are hashable so they can be part of cache keys.

    Attributes:
        source: name of the source.
        zoom: the zoom level asked for.
        body: "Earth", "Mars", ...
        crs: lat/lng CRS of that body as text ("EPSG:4326" on Earth).
        bounds: (x0, y0, x1, y1) pixel extent that holds imagery.
    """

    source: str
    zoom: int
    body: str
    crs: str
    bounds: tuple[int, int, int, int]

    def to_pixel(self, lng: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Float frame pixel coordinates (x, y) of lng/lat in degrees."""
        raise NotImplementedError

    def to_lnglat(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(lng, lat) in degrees of float frame pixel coordinates."""
        raise NotImplementedError


@dataclass(frozen=True)
class MercatorFrame(Frame):
    """The global spherical-mercator pixel grid of an XYZ tile scheme at ``zoom``."""

    def to_pixel(self, lng: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return lnglat_to_world(lng, lat, self.zoom)

    def to_lnglat(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        return world_to_lnglat(x, y, self.zoom)


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_user_input(src), CRS.from_user_input(dst), always_xy=True)


@dataclass(frozen=True)
class RasterFrame(Frame):
    """A raster's own pixel grid; ``raster_crs`` (WKT) and ``transform`` (affine a..f) place it."""

    raster_crs: str = ""
    transform: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def to_pixel(self, lng: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        from affine import Affine

        mx, my = _transformer(self.crs, self.raster_crs).transform(np.asarray(lng, float), np.asarray(lat, float))
        col, row = ~Affine(*self.transform) * (np.asarray(mx), np.asarray(my))
        return np.asarray(col, dtype=np.float64), np.asarray(row, dtype=np.float64)

    def to_lnglat(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        from affine import Affine

        # affine types ``*`` for one (x, y) of floats; it applies as well to arrays, element-wise
        mx, my = Affine(*self.transform) * (np.asarray(x, float), np.asarray(y, float))  # type: ignore[operator]
        lng, lat = _transformer(self.raster_crs, self.crs).transform(np.asarray(mx), np.asarray(my))
        return np.asarray(lng, dtype=np.float64), np.asarray(lat, dtype=np.float64)
