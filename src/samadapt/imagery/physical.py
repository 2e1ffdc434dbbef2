"""Physical values of raster bands: scale and offset applied, planetary special pixels masked.

GDAL reports a band's scale and offset (ISIS3 cubes, PDS4 products and many GeoTIFFs store
integers that mean ``raw * scale + offset``) but does not apply them; the stretch must see
physical values, so a negative scale or an offset does not turn the image upside down. ISIS3
cubes mark five special pixels (NULL, low / high instrument and representation saturation);
GDAL reports only NULL as nodata, so the others are masked here too, by the cube's pixel type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.io import DatasetReader

#: ISIS special pixel values by pixel type: NULL, LRS, LIS, HIS, HRS (ISIS3 SpecialPixel.h).
_ISIS_SPECIALS: dict[str, tuple[float, ...]] = {
    "uint8": (0.0, 255.0),
    "int16": (-32768.0, -32767.0, -32766.0, -32765.0, -32764.0),
    "uint16": (0.0, 1.0, 2.0, 65534.0, 65535.0),
    "float32": tuple(float(np.frombuffer(np.uint32(v).tobytes(), dtype=np.float32)[0])
                     for v in (0xFF7FFFFB, 0xFF7FFFFC, 0xFF7FFFFD, 0xFF7FFFFE, 0xFF7FFFFF)),
}


def special_pixels(ds: DatasetReader, data: np.ndarray, bands: Sequence[int]) -> np.ndarray:
    """(H, W) bool, True where any band of (C, H, W) ``data`` holds an ISIS3 special pixel; all False otherwise."""
    invalid = np.zeros(data.shape[1:], dtype=bool)
    if ds.driver != "ISIS3":
        return invalid
    for band, values in zip(data, (_ISIS_SPECIALS.get(ds.dtypes[b - 1], ()) for b in bands), strict=False):
        if not values:
            continue
        if np.issubdtype(band.dtype, np.floating):
            # float32 specials are the five lowest floats: anything at or below NULL is special
            invalid |= band.astype(np.float32) <= np.float32(values[0])
        else:
            invalid |= np.isin(band, values)
    return invalid


def physical_values(ds: DatasetReader, data: np.ndarray, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) ``data`` of ``bands`` as physical values, and where special pixels lie.

    Args:
        ds: the open raster the data was read from.
        data: raw values of ``bands`` as read.
        bands: 1-based band indexes, one per plane of ``data``.

    Returns:
        The data (float64 when a band has a scale other than 1 or an offset other than 0, else
        unchanged) and an (H, W) bool array, True at ISIS3 special pixels.
    """
    special = special_pixels(ds, data, bands)
    scales = [float(ds.scales[b - 1]) if ds.scales[b - 1] is not None else 1.0 for b in bands]
    offsets = [float(ds.offsets[b - 1]) if ds.offsets[b - 1] is not None else 0.0 for b in bands]
    if all(s == 1.0 for s in scales) and all(o == 0.0 for o in offsets):
        return data, special
    out = data.astype(np.float64)
    for i, (scale, offset) in enumerate(zip(scales, offsets, strict=True)):
        out[i] = out[i] * scale + offset
    out[:, special] = 0.0  # huge special values must not reach the stretch as numbers
    return out, special
