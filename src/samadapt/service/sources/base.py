"""What every imagery source of the HTTP service shares: the :class:`Source` interface, its errors
and the window check.

A source is chosen by name from the settings, never by a URL in a request, so the service can
only reach the tile servers it was configured with. Each source reads imagery in a *frame*
(:mod:`samadapt.service.frames`): the pixel grid of one zoom level.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any

import httpx
import numpy as np
from PIL import Image

from samadapt.errors import InputError, SamadaptError
from samadapt.service.frames import Frame

#: Largest window one read returns (a backstop; the service limits views far below this).
MAX_READ_PIXELS = 8192 * 8192


class FetchError(SamadaptError):
    """Imagery could not be had: a tile not fetched or decoded (HTTP status, timeout, bad bytes),
    or a local raster damaged."""


class SourceError(InputError):
    """A request names an unknown source, a zoom outside its range or a place it does not cover."""


def check_window(window: Any) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) as ints with x1 > x0 and y1 > y0, or SourceError."""
    try:
        x0, y0, x1, y1 = (int(v) for v in window)
    except (TypeError, ValueError):
        raise SourceError(f"a window is four integers (x0, y0, x1, y1), got {window!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise SourceError(f"window {window!r} is empty: need x1 > x0 and y1 > y0")
    if (x1 - x0) * (y1 - y0) > MAX_READ_PIXELS:
        raise SourceError(f"window {window!r} is too large: at most {MAX_READ_PIXELS} pixels can be read at once")
    return x0, y0, x1, y1


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3 or 4) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba)).save(buf, format="PNG")
    return buf.getvalue()


class Source(ABC):
    """A named imagery source: frames per zoom, windowed reads and base-map tiles."""

    name: str
    kind: str
    body: str
    crs: str
    min_zoom: int
    max_zoom: int
    attribution: str

    def frame(self, zoom: int) -> Frame:
        """The pixel grid of this source at ``zoom``.

        Raises:
            SourceError: when ``zoom`` is outside [min_zoom, max_zoom].
        """
        if isinstance(zoom, bool) or not isinstance(zoom, (int, np.integer)) \
                or not self.min_zoom <= zoom <= self.max_zoom:
            raise SourceError(f"zoom {zoom!r} is outside source {self.name!r}'s range {self.min_zoom}-{self.max_zoom}")
        return self._frame(int(zoom))

    @abstractmethod
    def _frame(self, zoom: int) -> Frame: ...

    @abstractmethod
    async def read(self, frame: Frame, window: tuple[int, int, int, int],
                   client: httpx.AsyncClient | None) -> np.ndarray:
        """(y1-y0, x1-x0, 3) uint8 pixels of window (x0, y0, x1, y1) of ``frame``; 0 outside ``frame.bounds``.

        Raises:
            FetchError: an upstream tile failed (status, timeout, connection, bad image).
            SourceError: the frame is not this source's or the window is empty.
        """

    @abstractmethod
    async def tile_png(self, z: int, x: int, y: int, client: httpx.AsyncClient | None) -> bytes:
        """One 256 px PNG of the body's spherical-mercator XYZ grid, for the page's base layer."""

    def bounds_lnglat(self) -> list[list[float]] | None:
        """[[south, west], [north, east]] covered, or None for the whole body."""
        return None

    def describe(self) -> dict[str, Any]:
        """What ``GET /sources`` tells the page about this source."""
        return {
            "name": self.name, "kind": self.kind, "body": self.body, "crs": self.crs,
            "min_zoom": self.min_zoom, "max_zoom": self.max_zoom, "attribution": self.attribution,
            "tiles": f"/tiles/{self.name}/{{z}}/{{x}}/{{y}}.png", "bounds": self.bounds_lnglat(),
        }

    def _check_frame(self, frame: Frame) -> None:
        if frame.source != self.name:
            raise SourceError(f"frame of source {frame.source!r} was given to source {self.name!r}")

    def _check_tile(self, z: int, x: int, y: int) -> None:
        self.frame(z)
        n = 2**z
        if not (0 <= x < n and 0 <= y < n):
            raise SourceError(f"tile {z}/{x}/{y} does not exist: at zoom {z}, x and y run from 0 to {n - 1}")


def lookup_source(sources: dict[str, Source], name: str) -> Source:
    """The configured source called ``name``; SourceError naming the available ones otherwise."""
    source = sources.get(name) if isinstance(name, str) else None
    if source is None:
        shown = name[:64] if isinstance(name, str) else name
        raise SourceError(f"unknown source {shown!r}; configured sources are {sorted(sources)}")
    return source
