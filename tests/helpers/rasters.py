"""Tiny GeoTIFFs for tests, written with a real CRS: the one GeoTIFF writer of the test suite."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

#: The test CRS on Earth: UTM zone 16N (WGS 84), around 36 N, 87 W.
UTM = "EPSG:32616"
#: The default grid of :func:`write_geotiff`: 0.5 m pixels, north up, top-left at (500 000, 3 700 000).
GRID = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 3_700_000.0)


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    crs: CRS | str | None = UTM,
    transform: Affine | None = GRID,
    nodata: float | None = None,
    colorinterp: Sequence[ColorInterp] | None = None,
    mask: np.ndarray | None = None,
    **creation: str,
) -> Path:
    """Write ``data`` as a GeoTIFF at ``path``, its data type that of the array.

    Args:
        path: the file to write.
        data: (C, H, W) bands, or one (H, W) band.
        crs: the raster's CRS; None writes none.
        transform: the pixel-to-map affine transform; None writes none.
        nodata: the nodata value to declare (pixels are written as given).
        colorinterp: each band's colour interpretation, e.g. ``[red, green, blue, alpha]``.
        mask: an (H, W) uint8 dataset mask (0 = invalid) to write beside the bands.
        **creation: GTiff creation options, e.g. ``photometric="MINISBLACK"``.

    Returns:
        ``path``.
    """
    bands = data[None] if data.ndim == 2 else data
    count, height, width = bands.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype.name,
        crs=crs, transform=transform, nodata=nodata, **creation,
    ) as dst:  # fmt: skip
        dst.write(bands)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
        if mask is not None:
            dst.write_mask(mask)
    return path
