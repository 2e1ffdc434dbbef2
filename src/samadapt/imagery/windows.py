"""Read windows of an open raster as a model's tiles, scaled with limits of the whole raster.

Mapping and the service's local sources read a raster tile by tile; a per-tile stretch would
make neighbouring tiles disagree in brightness, so :func:`raster_limits` computes the 2-98 %
limits once for the whole raster and :func:`read_tile` scales every window with them. Windows
are in pixels of the raster (``Window(col_off, row_off, width, height)``); bands are 1-based.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from samadapt.errors import InputError
from samadapt.imagery.physical import physical_values
from samadapt.imagery.read import pixel_read_errors
from samadapt.imagery.stretch import choose_bands, looks_like_alpha, scale_to_uint8, stretch_limits


def bands_for(ds: DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The 1-based bands a model reads from ``ds``, one per input channel.

    Given ``bands`` are checked against the raster and kept as they are (an adapter trained on
    other bands takes as many channels as it was trained on). Without them, read_image's choice
    applies (:func:`samadapt.imagery.stretch.choose_bands`), a grey band read three times since SAM
    takes RGB.

    Raises:
        InputError: a band the raster does not have.
    """
    if bands:
        for b in bands:
            if not 1 <= b <= ds.count:
                raise InputError(f"band {b} does not exist: the raster has {ds.count} band(s)")
        return tuple(bands)
    alpha_last = ds.count == 4 and ds.colorinterp[3] == ColorInterp.alpha
    chosen, _ = choose_bands(None, ds.count, alpha_last, ds.name)
    return chosen * 3 if len(chosen) == 1 else chosen


def raster_limits(ds: DatasetReader, bands: Sequence[int], *, max_pixels: int = 4_000_000) -> np.ndarray | None:
    """Per-band 2-98 % limits of the whole raster (from a decimated read when large); None for uint8.

    Returns:
        (len(bands), 2) float limits, or None when every band is uint8 (read as it is).
    """
    if all(ds.dtypes[b - 1] == "uint8" and ds.scales[b - 1] in (None, 1.0) and ds.offsets[b - 1] in (None, 0.0)
           for b in bands):
        return None
    factor = max(1, int(np.ceil(np.sqrt(ds.width * ds.height / max_pixels))))
    shape = (len(bands), max(1, ds.height // factor), max(1, ds.width // factor))
    with pixel_read_errors(ds.name, bands=bands):
        data = ds.read(list(bands), out_shape=shape, resampling=Resampling.nearest)
        valid = ds.dataset_mask(out_shape=shape[1:], resampling=Resampling.nearest) > 0
        valid &= _unmarked_alpha(ds, bands, out_shape=shape[1:])
    data, special = physical_values(ds, data, bands)
    valid &= ~special
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return stretch_limits(data, valid)


def _unmarked_alpha(ds: DatasetReader, bands: Sequence[int], window: Window | None = None,
                    out_shape: tuple[int, int] | None = None) -> np.ndarray | bool:
    """Validity from band 2 of a 2-band raster shown as grey, when band 2 is an alpha band GDAL
    does not know of (read_image's rule: only 0 and its type's maximum); True otherwise.

    A marked alpha band is in GDAL's dataset mask already; a second band of data (SAR VV / VH)
    is not alpha.
    """
    if ds.count != 2 or set(bands) != {1} or ds.colorinterp[1] == ColorInterp.alpha:
        return True
    if out_shape is None:
        band = ds.read(2, window=window)
    else:
        band = ds.read(2, window=window, out_shape=out_shape, resampling=Resampling.nearest)
    return band > 0 if looks_like_alpha(band) else True


def read_tile(ds: DatasetReader, window: Window, bands: Sequence[int], limits: np.ndarray | None,
              out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, C) uint8 pixels of a window scaled with the raster-wide limits, and its (h, w) validity.

    With ``out_shape`` the window is resampled (bilinear; validity nearest) to that (rows, cols).
    Invalid pixels (nodata, masked, alpha 0, not finite) are 0.

    Args:
        ds: the open raster.
        window: the window, in pixels of the raster.
        bands: 1-based bands, one per channel of the result (see :func:`bands_for`).
        limits: from :func:`raster_limits`, or None to clip values to 0-255.
        out_shape: (rows, cols) to resample to, or None for the window's own size.

    Raises:
        InputFileError: the raster is damaged where the window lies.
    """
    with pixel_read_errors(ds.name, window=window, bands=bands):
        if out_shape is None:
            data = ds.read(list(bands), window=window)
            valid = ds.dataset_mask(window=window) > 0
        else:
            data = ds.read(list(bands), window=window, out_shape=(len(bands), *out_shape),
                           resampling=Resampling.bilinear)
            valid = ds.dataset_mask(window=window, out_shape=out_shape, resampling=Resampling.nearest) > 0
        valid &= _unmarked_alpha(ds, bands, window, out_shape)
    data, special = physical_values(ds, data, bands)
    valid &= ~special
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    if limits is None:
        scaled = np.clip(np.nan_to_num(data.astype(np.float64)), 0, 255).astype(np.uint8)
    else:
        scaled = scale_to_uint8(data, limits)
    scaled[:, ~valid] = 0
    return np.moveaxis(scaled, 0, -1), valid

