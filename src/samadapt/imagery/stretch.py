"""Which bands of an image SAM sees, and how they are stretched to uint8.

Arrays handed to the stretch are band-first, (C, H, W); bands are numbered from 1, as in GDAL
and on the command line (``--bands 4,3,2``). :mod:`samadapt.imagery.read` reads files and
arrays through these; :mod:`samadapt.imagery.windows` scales a raster's windows with limits
computed once for the whole raster.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np

from samadapt.errors import InputError

__all__ = [
    "AUTO_PERCENTILES",
    "BANDS_HINT",
    "Stretch",
    "check_stretch",
    "choose_bands",
    "finite_pixels",
    "looks_like_alpha",
    "parse_bands",
    "scale_to_uint8",
    "stretch_limits",
    "to_rgb8",
]

Stretch = tuple[float, float] | None | Literal["auto"]
"""``"auto"``: uint8 untouched, other dtypes stretched (2, 98); a (low, high) percentile
pair: that stretch for any dtype; ``None``: no stretch, values clipped to 0-255."""

AUTO_PERCENTILES: tuple[float, float] = (2.0, 98.0)
"""Percentiles used by ``stretch="auto"`` (QGIS's default cumulative count cut)."""

BANDS_HINT = "pass 1 or 3 bands, e.g. --bands 4,3,2 on the command line or bands=(4, 3, 2) in Python"



def parse_bands(text: str) -> tuple[int, ...]:
    """Parse a command-line band list such as ``"4,3,2"`` into 1-based band indexes.

    Repeats are allowed (``"1,1,1"``). Whether the count suits the image (1 or 3) and whether
    the bands exist is checked by :func:`samadapt.imagery.read.read_image`.

    Args:
        text: comma-separated positive integers; spaces around them are ignored.

    Returns:
        The band indexes in the given order, e.g. ``(4, 3, 2)``.

    Raises:
        InputError: if the text is empty or an item is not an integer of at least 1.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise InputError("the band list is empty; give 1-based band numbers separated by commas, e.g. 4,3,2")
    bands = []
    for item in items:
        try:
            band = int(item)
        except ValueError:
            raise InputError(
                f"band {item!r} in {text!r} is not a whole number; "
                "give 1-based band numbers separated by commas, e.g. 4,3,2"
            ) from None
        if band < 1:
            raise InputError(f"band {band} in {text!r} is not allowed; bands are numbered from 1")
        bands.append(band)
    return tuple(bands)


def check_stretch(stretch: Stretch) -> tuple[float, float] | None | Literal["auto"]:
    if stretch is None or (isinstance(stretch, str) and stretch == "auto"):
        return stretch
    if isinstance(stretch, str) or not isinstance(stretch, Sequence) or len(stretch) != 2:
        raise InputError(f"stretch must be 'auto', None or a (low, high) percentile pair, got {stretch!r}")
    low, high = float(stretch[0]), float(stretch[1])
    if not (0.0 <= low < high <= 100.0):
        raise InputError(f"stretch percentiles must satisfy 0 <= low < high <= 100, got ({low:g}, {high:g})")
    return (low, high)


def stretch_limits(
    array: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float] = AUTO_PERCENTILES
) -> np.ndarray:
    """Per-band values at the given percentiles, over valid and finite pixels only.

    Compute these once (e.g. on a whole raster or an overview) and pass them to
    :func:`scale_to_uint8` to stretch every window of a raster the same way.

    Args:
        array: (C, H, W) numeric array.
        valid: (H, W) bool, True where a pixel counts.
        percentiles: (low, high) percentiles in [0, 100].

    Returns:
        (C, 2) float64 array of (low value, high value) per band; NaN for a band with no
        valid finite pixel.
    """
    limits = np.full((array.shape[0], 2), np.nan)
    for c, band in enumerate(array):
        values = band[valid]
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size:
            limits[c] = np.percentile(values.astype(np.float64), percentiles)
    return limits


def scale_to_uint8(array: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Map each band linearly so its low limit becomes 0 and its high limit 255.

    Values outside the limits are clipped. A band whose limits are equal (a constant band)
    gets 0 at or below the limit and 255 above, so nothing divides by zero; a band with NaN
    limits (no valid pixel) becomes 0.

    Args:
        array: (C, H, W) numeric array.
        limits: (C, 2) float array from :func:`stretch_limits`.

    Returns:
        (C, H, W) uint8 array; non-finite inputs become 0.
    """
    out = np.zeros(array.shape, dtype=np.uint8)
    for c, band in enumerate(array):
        low, high = limits[c]
        if not (np.isfinite(low) and np.isfinite(high)):
            continue
        values = band.astype(np.float64)
        with np.errstate(invalid="ignore"):
            if high > low:
                scaled = (values - low) * (255.0 / (high - low))
            else:
                scaled = np.where(values > high, 255.0, 0.0)
            scaled = np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 255.0)
        out[c] = np.rint(scaled).astype(np.uint8)
    return out


def to_rgb8(array: np.ndarray, valid: np.ndarray, *, stretch: Stretch = "auto") -> np.ndarray:
    """Turn one or three bands of any numeric dtype into the (H, W, 3) uint8 RGB SAM sees.

    Args:
        array: (C, H, W) array, band-first, C in {1, 3}; one band is repeated to grey RGB.
        valid: (H, W) bool, True where a pixel is data. Pixels that are False, or NaN or
            infinite in any band, are excluded from the statistics and set to 0.
        stretch: ``"auto"`` leaves uint8 untouched and stretches any other dtype between
            its (2, 98) percentiles; a (low, high) percentile pair forces that stretch for
            any dtype; None clips values to 0-255 (rounding floats) without stretching.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        InputError: on a wrong shape, band count, dtype or stretch.
    """
    array = np.asarray(array)
    valid = np.asarray(valid)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise InputError(
            f"to_rgb8 needs a (C, H, W) array with C = 1 or 3 bands, got shape {array.shape}; {BANDS_HINT}"
        )
    if valid.shape != array.shape[1:]:
        raise InputError(f"valid has shape {valid.shape} but the image is {array.shape[1:]} (rows, cols)")
    if array.dtype.kind not in "biuf":
        raise InputError(f"image values must be boolean, integer or real numbers, got dtype {array.dtype}")
    stretch = check_stretch(stretch)
    valid = valid.astype(bool) & finite_pixels(array)
    if stretch == "auto":
        stretch = None if array.dtype == np.uint8 else AUTO_PERCENTILES
    if stretch is None:
        if array.dtype == np.uint8:
            bytes_ = array.copy()
        else:
            values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            bytes_ = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    else:
        bytes_ = scale_to_uint8(array, stretch_limits(array, valid, stretch))
    bytes_[:, ~valid] = 0
    if bytes_.shape[0] == 1:
        bytes_ = np.repeat(bytes_, 3, axis=0)
    return np.ascontiguousarray(bytes_.transpose(1, 2, 0))


def finite_pixels(array: np.ndarray) -> np.ndarray:
    """(H, W) bool, True where every band of a (C, H, W) array is finite."""
    if array.dtype.kind != "f":
        return np.ones(array.shape[1:], dtype=bool)
    return np.isfinite(array).all(axis=0)


def choose_bands(
    bands: Sequence[int] | None, count: int, alpha_last: bool, name: str
) -> tuple[tuple[int, ...], int | None]:
    """Pick the 1-based bands to show and the alpha band (or None) for a ``count``-band source.

    ``alpha_last`` says whether the source marks its last band as alpha (colour
    interpretation); only the defaults use it.
    """
    if bands is None:
        if count == 1:
            return (1,), None
        if count == 2:
            return (1,), 2  # grey + alpha
        if count == 4 and alpha_last:
            return (1, 2, 3), 4
        return (1, 2, 3), None
    if isinstance(bands, (str, bytes)):
        raise InputError(
            f"bands must be a sequence of integers, got the string {bands!r}; "
            "use parse_bands() to read text like '4,3,2'"
        )
    chosen = []
    for band in bands:
        try:
            index = operator.index(band)
        except TypeError:
            raise InputError(f"band {band!r} is not an integer; bands are 1-based integers from 1 to {count}") from None
        if isinstance(band, bool) or not 1 <= index <= count:
            raise InputError(f"band {band!r} does not exist: {name} has {count} band(s), numbered 1 to {count}")
        chosen.append(index)
    if len(chosen) not in (1, 3):
        raise InputError(f"got {len(chosen)} bands {tuple(chosen)} but SAM takes grey or RGB; {BANDS_HINT}")
    return tuple(chosen), None


def looks_like_alpha(band: np.ndarray) -> bool:
    """True when an unmarked second band can only be an alpha band: integers, all 0 or the type's maximum.

    A second band of data (SAR VV / VH in dB, say) is not taken for validity: its values
    would blank most of the image.
    """
    if not np.issubdtype(band.dtype, np.integer) or band.dtype == np.bool_:
        return False
    top = np.iinfo(band.dtype).max
    return bool(((band == 0) | (band == top)).all())
