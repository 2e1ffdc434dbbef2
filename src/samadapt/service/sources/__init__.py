"""Imagery sources of the HTTP service: XYZ tile servers and local GeoTIFF / COG files.

A source is chosen by name from the settings, never by a URL in a request, so the service can
only reach the tile servers it was configured with. Each source reads imagery in a *frame*
(:mod:`samadapt.service.frames`): the pixel grid of one zoom level, the global
spherical-mercator grid for an XYZ server, the raster's own grid (read by window without
resampling) for a local raster.

Modules: :mod:`~samadapt.service.sources.base` (the interface and its errors),
:mod:`~samadapt.service.sources.tiles` (XYZ servers), :mod:`~samadapt.service.sources.local`
(local rasters; rasterio and pyproj are imported when one is opened).
"""

from __future__ import annotations

from samadapt.service.frames import (
    MAX_LAT,
    TILE_SIZE,
    Frame,
    MercatorFrame,
    RasterFrame,
    lnglat_to_world,
    world_to_lnglat,
)
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources.base import (
    MAX_READ_PIXELS,
    FetchError,
    Source,
    SourceError,
    check_window,
    encode_png,
    lookup_source,
)
from samadapt.service.sources.local import LocalSource
from samadapt.service.sources.tiles import MAX_REDIRECTS, MAX_TILE_BYTES, XYZSource, decode_tile


def build_sources(settings: ServiceSettings) -> dict[str, Source]:
    """The sources named in ``settings``, built once at start-up (local files are opened to check them).

    Raises:
        InputFileError: a local source's file is missing or not a georeferenced raster.
    """
    sources: dict[str, Source] = {}
    for name, spec in settings.sources.items():
        if spec["type"] == "xyz":
            sources[name] = XYZSource(
                name, spec["url"], attribution=spec["attribution"], min_zoom=spec["min_zoom"],
                max_zoom=spec["max_zoom"], subdomains=spec["subdomains"], body=spec["body"], crs=spec["crs"],
                timeout_s=settings.fetch_timeout_s, concurrency=settings.tile_concurrency,
                cache_tiles=settings.tile_cache_tiles, user_agent=settings.user_agent,
            )
        else:
            sources[name] = LocalSource(name, spec["path"], attribution=spec["attribution"],
                                        min_zoom=spec["min_zoom"], max_zoom=spec["max_zoom"])
    return sources


__all__ = [
    "MAX_LAT",
    "MAX_READ_PIXELS",
    "MAX_REDIRECTS",
    "MAX_TILE_BYTES",
    "TILE_SIZE",
    "FetchError",
    "Frame",
    "LocalSource",
    "MercatorFrame",
    "RasterFrame",
    "Source",
    "SourceError",
    "XYZSource",
    "build_sources",
    "check_window",
    "decode_tile",
    "encode_png",
    "lnglat_to_world",
    "lookup_source",
    "world_to_lnglat",
]
