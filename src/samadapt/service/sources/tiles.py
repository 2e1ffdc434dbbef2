"""XYZ tile servers as imagery sources: tiles fetched (same-origin redirects only), cached and stitched.

An XYZ source's frame is the global spherical-mercator pixel grid of one zoom level.
"""

from __future__ import annotations

import asyncio
import io
import threading
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import numpy as np
from cachetools import LRUCache
from PIL import Image

from samadapt.service.frames import TILE_SIZE, Frame, MercatorFrame
from samadapt.service.sources.base import FetchError, Source, check_window, encode_png

#: Same-origin redirects a tile request follows.
MAX_REDIRECTS = 3
#: A tile larger than this is refused rather than read into memory.
MAX_TILE_BYTES = 8 * 1024 * 1024

_T = TypeVar("_T")


def decode_tile(data: bytes, url: str) -> np.ndarray:
    """(256, 256, 3) uint8 RGB of an image tile's bytes (resized when not 256 px); FetchError if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max(img.size) > 4 * TILE_SIZE:
                raise FetchError(f"tile {url} is {img.size[0]}x{img.size[1]} px, far larger than a {TILE_SIZE} px tile")
            rgb = img.convert("RGB")
    except FetchError:
        raise
    except Image.UnidentifiedImageError:
        # The remote bytes are not echoed: a message must not relay what a server chose to send.
        raise FetchError(f"tile {url} is not an image ({len(data)} bytes of another kind)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:  # corrupt data
        raise FetchError(f"tile {url} is a broken image ({type(exc).__name__}: {exc})") from None
    if rgb.size != (TILE_SIZE, TILE_SIZE):
        rgb = rgb.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


class TileCache:
    """A small thread-safe LRU of tile bytes keyed by URL, so panning re-uses fetched tiles."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: LRUCache[str, bytes] = LRUCache(maxsize=max(0, size))
        # A source may serve event loops on several threads, and cachetools caches are not thread-safe.
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The tile's bytes (refreshing the entry), or None."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, data: bytes) -> None:
        """Keep a tile, evicting the least recently used beyond ``size`` (0 keeps nothing)."""
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = data

    def pop(self, key: str) -> None:
        """Forget a tile (bad bytes are never served twice)."""
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


async def gather_or_cancel(coros: list[Awaitable[_T]]) -> list[_T]:
    """Like ``asyncio.gather`` but the first failure cancels the others (no orphan fetches)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class XYZSource(Source):
    """A configured XYZ tile server, read through a small in-memory tile cache.

    Args:
        name: source name.
        url: template with ``{z}``, ``{x}``, ``{y}`` and optionally ``{s}`` (a subdomain).
        attribution: text the map must show.
        min_zoom, max_zoom: zoom range served.
        subdomains: values of ``{s}``, chosen per tile so a tile always has the same URL.
        body, crs: the body the tiles show and its lat/lng CRS.
        timeout_s: limit for one tile, connection to last byte.
        concurrency: tiles fetched at once (per event loop).
        cache_tiles: tiles kept in memory.
        user_agent: sent with each request.
    """

    kind = "xyz"

    def __init__(self, name: str, url: str, *, attribution: str = "", min_zoom: int = 0, max_zoom: int = 19,
                 subdomains: tuple[str, ...] | list[str] = ("a", "b", "c"), body: str = "Earth",
                 crs: str = "EPSG:4326", timeout_s: float = 10.0, concurrency: int = 8, cache_tiles: int = 512,
                 user_agent: str = "samadapt") -> None:
        self.name, self.url, self.attribution = name, url, attribution
        self.min_zoom, self.max_zoom = min_zoom, max_zoom
        self.subdomains = tuple(subdomains) or ("a",)
        self.body, self.crs = body, crs
        self.timeout_s, self.concurrency, self.user_agent = float(timeout_s), int(concurrency), user_agent
        self.cache = TileCache(cache_tiles)
        self._semaphores: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _frame(self, zoom: int) -> Frame:
        side = TILE_SIZE * 2**zoom
        return MercatorFrame(self.name, zoom, self.body, self.crs, (0, 0, side, side))

    def tile_url(self, z: int, x: int, y: int) -> str:
        """The URL of tile (z, x, y), from the configured template only."""
        sub = self.subdomains[(x + y) % len(self.subdomains)]
        return self.url.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y)).replace("{s}", sub)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.concurrency)
            return sem

    async def fetch_tile(self, z: int, x: int, y: int, client: httpx.AsyncClient | None) -> tuple[str, bytes]:
        """(url, bytes) of one tile, from the cache or the server.

        Raises:
            FetchError: naming the URL and why (status, timeout, connection, size).
        """
        url = self.tile_url(z, x, y)
        data = self.cache.get(url)
        if data is not None:
            return url, data
        async with self._semaphore():
            data = self.cache.get(url)  # filled by another request while this one waited
            if data is None:
                try:
                    data = await asyncio.wait_for(self._get(url, client), self.timeout_s)
                except (TimeoutError, httpx.TimeoutException):
                    raise FetchError(f"tile {url} timed out after {self.timeout_s:g} s") from None
                except httpx.HTTPError as exc:
                    raise FetchError(f"tile {url} could not be fetched ({type(exc).__name__}: {exc})") from None
                self.cache.put(url, data)
        return url, data

    async def _get(self, url: str, client: httpx.AsyncClient | None) -> bytes:
        """The tile's bytes. Redirects are followed only within the configured server's origin
        (scheme, host and port), at most :data:`MAX_REDIRECTS` times: the service fetches from the
        sources it was configured with and from nowhere else."""
        if client is None:  # a service built without one (local sources only) cannot reach a tile server
            raise FetchError(f"source {self.name!r} is a tile server and this service has no HTTP client to reach it")
        headers = {"User-Agent": self.user_agent, "Accept": "image/png,image/jpeg,image/*"}
        current = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", current, headers=headers, timeout=httpx.Timeout(self.timeout_s),
                                     follow_redirects=False) as resp:
                if resp.is_redirect:
                    target = current.join(resp.headers.get("Location", ""))
                    if (target.scheme, target.host, target.port) != (current.scheme, current.host, current.port):
                        raise FetchError(f"tile {url} redirects to another server, which is not a configured "
                                         "source; it was not followed")
                    current = target
                    continue
                if resp.status_code != 200:
                    raise FetchError(f"tile {url} returned HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_TILE_BYTES:
                        raise FetchError(f"tile {url} is larger than {MAX_TILE_BYTES // 2**20} MiB")
                    chunks.append(chunk)
            if not size:
                raise FetchError(f"tile {url} is empty")
            return b"".join(chunks)
        raise FetchError(f"tile {url} redirects more than {MAX_REDIRECTS} times")

    def _decode(self, url: str, data: bytes) -> np.ndarray:
        try:
            return decode_tile(data, url)
        except FetchError:
            self.cache.pop(url)  # never serve the same bad bytes again
            raise

    async def read(self, frame: Frame, window: tuple[int, int, int, int],
                   client: httpx.AsyncClient | None) -> np.ndarray:
        self._check_frame(frame)
        x0, y0, x1, y1 = check_window(window)
        z, n = frame.zoom, 2**frame.zoom
        tx = range(max(0, x0 // TILE_SIZE), min(n - 1, (x1 - 1) // TILE_SIZE) + 1)
        ty = range(max(0, y0 // TILE_SIZE), min(n - 1, (y1 - 1) // TILE_SIZE) + 1)
        keys = [(x, y) for y in ty for x in tx]
        fetched = await gather_or_cancel([self.fetch_tile(z, x, y, client) for x, y in keys])
        return await asyncio.to_thread(self._stitch, (x0, y0, x1, y1), keys, fetched)

    def _stitch(self, window: tuple[int, int, int, int], keys: list[tuple[int, int]],
                fetched: list[tuple[str, bytes]]) -> np.ndarray:
        x0, y0, x1, y1 = window
        out = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        for (tx, ty), (url, data) in zip(keys, fetched, strict=False):
            tile = self._decode(url, data)
            left, top = tx * TILE_SIZE, ty * TILE_SIZE
            ax0, ay0 = max(x0, left), max(y0, top)
            ax1, ay1 = min(x1, left + TILE_SIZE), min(y1, top + TILE_SIZE)
            out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = tile[ay0 - top:ay1 - top, ax0 - left:ax1 - left]
        return out

    async def tile_png(self, z: int, x: int, y: int, client: httpx.AsyncClient | None) -> bytes:
        self._check_tile(z, x, y)
        url, data = await self.fetch_tile(z, x, y, client)
        tile = self._decode(url, data)
        return data if data.startswith(b"\x89PNG\r\n\x1a\n") else encode_png(tile)
