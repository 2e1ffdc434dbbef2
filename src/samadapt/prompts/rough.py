"""Rough masks for prompting at inference time, when no ground truth exists.

A rough mask only has to be about right in size and place: SAM refines it. It comes from one
of three sources (the river fine-tuning tutorial's recipe):

* a spectral index thresholded, e.g. McFeeters NDWI = (green - NIR) / (green + NIR) > 0 for
  open water when a near-infrared band exists;
* an HSV colour range on RGB (H in degrees, S and V in [0, 1]) when only RGB exists;
* a mask the user already has.

:func:`clean_mask` then drops small specks and erodes the rest so that only pixels well inside
large blobs remain, and :func:`prompts_from_rough` turns each blob into a box or points with
:func:`samadapt.prompts.sampling.prompts_from_mask`. Arrays are (H, W) or band-first (C, H, W);
bands are numbered from 1 as in GDAL.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from samadapt.errors import InputError
from samadapt.prompts.sampling import SamplingOptions, prompts_from_mask
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    from samadapt.imagery.sources import RasterSource

HSV = tuple[float, float, float]
"""(hue in degrees [0, 360], saturation in [0, 1], value in [0, 1])."""


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    """(H, W) bool: True where ``mask`` is True or a non-zero finite number."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"{name} must be an (H, W) array, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.copy()
    if mask.dtype.kind not in "iuf":
        raise InputError(f"{name} must hold bool or numeric values, got dtype {mask.dtype}")
    return np.isfinite(mask) & (mask != 0)


def normalized_difference(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The normalized difference (a - b) / (a + b) of two bands, as for NDWI or NDVI.

    Args:
        a: (H, W) numeric band.
        b: (H, W) numeric band of the same shape.
        valid: optional (H, W) bool, False where a pixel is nodata.

    Returns:
        (H, W) float32 in [-1, 1] for non-negative inputs; NaN where a + b == 0, where
        ``valid`` is False, or where either input is NaN or infinite.

    Raises:
        InputError: if the shapes differ or the values are not numeric.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"normalized_difference needs two (H, W) bands of one shape, got {a.shape} and {b.shape}")
    if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
        raise InputError(f"bands must hold numbers, got dtypes {a.dtype} and {b.dtype}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    total = a64 + b64
    bad = ~np.isfinite(total) | ~np.isfinite(a64 - b64) | (total == 0)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != a.shape:
            raise InputError(f"valid has shape {valid.shape} but the bands are {a.shape} (rows, cols)")
        bad |= ~valid.astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a64 - b64) / np.where(bad, 1.0, total)
    out[bad] = np.nan
    return out.astype(np.float32)


def index_from_bands(path: str | Path | RasterSource, a: int, b: int) -> np.ndarray:
    """Read two bands of a raster and return their normalized difference (a - b) / (a + b).

    The bands are read as physical values (scale and offset applied: a reflectance offset changes
    the index), from any source :func:`samadapt.imagery.sources.resolve_source` takes.

    Args:
        path: a raster file, URL, virtual path or STAC item.
        a: 1-based index of the first band.
        b: 1-based index of the second band.

    Returns:
        (H, W) float32; NaN where either band is nodata (nodata value, mask or alpha, ISIS3
        special pixel), not finite, or where a + b == 0.

    Raises:
        InputFileError: if the source is missing or not a readable raster.
        InputError: if a band index does not exist in the file.
    """
    from samadapt.imagery.read import read_physical_bands

    data, valid = read_physical_bands(path, [a, b])
    return normalized_difference(data[0], data[1], valid)


def ndwi(raster_path_or_array: str | Path | np.ndarray, *, green: int, nir: int) -> np.ndarray:
    """McFeeters' NDWI = (green - NIR) / (green + NIR); open water is mostly above 0.

    Args:
        raster_path_or_array: a raster file, or a band-first (C, H, W) numeric array.
        green: 1-based index of the green band.
        nir: 1-based index of the near-infrared band.

    Returns:
        (H, W) float32 in [-1, 1]; NaN on nodata (files only), non-finite values and where
        green + NIR == 0.

    Raises:
        InputFileError: if a file is missing or unreadable.
        InputError: if a band does not exist or the array is not (C, H, W).
    """
    if isinstance(raster_path_or_array, (str, Path)):
        return index_from_bands(Path(raster_path_or_array), green, nir)
    array = np.asarray(raster_path_or_array)
    if array.ndim != 3:
        raise InputError(f"ndwi needs a band-first (C, H, W) array or a raster path, got shape {array.shape}")
    count = array.shape[0]
    for band in (green, nir):
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 1 <= band <= count:
            raise InputError(f"band {band!r} does not exist: the array has {count} band(s), numbered 1 to {count}")
    return normalized_difference(array[green - 1], array[nir - 1])


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Convert an 8-bit RGB image to HSV.

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) float64: hue in degrees [0, 360) (0 for greys, where hue is undefined),
        saturation and value in [0, 1]. Matches :func:`colorsys.rgb_to_hsv` with hue x 360.

    Raises:
        InputError: if the array is not (H, W, 3) uint8.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"rgb must be an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    r, g, b = np.moveaxis(rgb.astype(np.float64) / 255.0, 2, 0)
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    grey = chroma == 0
    c = np.where(grey, 1.0, chroma)
    # Same precedence as colorsys: red, then green, then blue wins a tie for the maximum.
    hue = np.where(value == r, (g - b) / c, np.where(value == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    hue = np.where(grey, 0.0, np.mod(hue * 60.0, 360.0))
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def _check_hsv(bound: HSV, name: str) -> tuple[float, float, float]:
    if len(bound) != 3:
        raise InputError(f"{name} must be (hue, saturation, value), got {bound!r}")
    h, s, v = (float(x) for x in bound)
    if not (0.0 <= h <= 360.0 and 0.0 <= s <= 1.0 and 0.0 <= v <= 1.0):
        raise InputError(f"{name} must have hue in [0, 360] degrees and saturation, value in [0, 1], got {bound!r}")
    return h, s, v


def hsv_range(rgb: np.ndarray, lower: HSV, upper: HSV) -> np.ndarray:
    """Pixels whose colour lies in an HSV box, e.g. blue water or red roofs.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        lower: (hue degrees, saturation, value) lower bounds, inclusive.
        upper: (hue degrees, saturation, value) upper bounds, inclusive. A hue range with
            lower > upper wraps around 0: (340, ...) to (20, ...) takes reds on both sides.
            Greys have hue 0, so give a saturation lower bound above 0 to leave them out.

    Returns:
        (H, W) bool, True inside the range.

    Raises:
        InputError: on a bad image or bounds outside [0, 360] x [0, 1] x [0, 1], or a
            saturation or value lower bound above its upper bound.
    """
    h0, s0, v0 = _check_hsv(lower, "lower")
    h1, s1, v1 = _check_hsv(upper, "upper")
    if s0 > s1 or v0 > v1:
        raise InputError(f"saturation and value lower bounds must not exceed the upper ones, got {lower!r} {upper!r}")
    hsv = rgb_to_hsv(rgb)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    in_hue = (hue >= h0) & (hue <= h1) if h0 <= h1 else (hue >= h0) | (hue <= h1)
    return in_hue & (sat >= s0) & (sat <= s1) & (val >= v0) & (val <= v1)


def clean_mask(mask: np.ndarray, *, min_area: int = 0, erode: int = 0, fill_holes: bool = False) -> np.ndarray:
    """Tidy a rough mask: fill holes, drop small components, then erode what is left.

    Args:
        mask: (H, W) bool (or numbers, non-zero = True).
        min_area: components (8-connected) with fewer pixels are removed.
        erode: radius in pixels of a disc erosion; a pixel stays when no background pixel
            lies within this distance. The image edge is not background, so blobs cut by the
            edge are not eaten from that side.
        fill_holes: fill background enclosed by the mask (holes not connected to the edge).

    Returns:
        (H, W) bool.

    Raises:
        InputError: on a bad mask or a negative ``min_area`` or ``erode``.
    """
    out = _as_bool(mask, "mask")
    for value, name in ((min_area, "min_area"), (erode, "erode")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InputError(f"{name} must be an integer of at least 0, got {value!r}")
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    if min_area > 1:
        labels, count = ndimage.label(out, structure=np.ones((3, 3), dtype=bool))
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        keep = areas >= min_area
        keep[0] = False
        out = keep[labels]
    if erode and not out.all():
        # Disc erosion in O(pixels): the distance to the nearest background pixel.
        out = ndimage.distance_transform_edt(out) > erode
    return np.asarray(out, dtype=bool)


def rough_mask(
    *,
    index: np.ndarray | None = None,
    threshold: float = 0.0,
    above: bool = True,
    hsv: tuple[np.ndarray, HSV, HSV] | None = None,
    user_mask: np.ndarray | None = None,
    min_area: int = 0,
    erode: int = 0,
    fill_holes: bool = False,
) -> np.ndarray:
    """A rough object mask from exactly one source, cleaned with :func:`clean_mask`.

    Args:
        index: (H, W) index such as :func:`ndwi`; pixels above ``threshold`` (below, with
            ``above=False``) are the object; NaN pixels never are.
        threshold: the index threshold (0 for NDWI water).
        above: True keeps index > threshold, False keeps index < threshold.
        hsv: ``(rgb, lower, upper)``: an (H, W, 3) uint8 image and HSV bounds for
            :func:`hsv_range`.
        user_mask: (H, W) bool or numbers (non-zero = object), used as it is.
        min_area: remove components smaller than this many pixels.
        erode: disc erosion radius in pixels.
        fill_holes: fill holes inside the mask.

    Returns:
        (H, W) bool rough mask.

    Raises:
        InputError: if no source or more than one is given, or a source is malformed.
    """
    given = [name for name, value in (("index", index), ("hsv", hsv), ("user_mask", user_mask)) if value is not None]
    if len(given) != 1:
        if not given:
            raise InputError("rough_mask needs one source: index=, hsv=(rgb, lower, upper) or user_mask=")
        raise InputError(f"rough_mask got {' and '.join(given)}; give exactly one source")
    if index is not None:
        index = np.asarray(index)
        if index.ndim != 2 or index.dtype.kind not in "iuf":
            raise InputError(f"index must be an (H, W) numeric array, got {index.dtype} {index.shape}")
        threshold = float(threshold)
        with np.errstate(invalid="ignore"):
            mask = index > threshold if above else index < threshold
    elif hsv is not None:
        if not isinstance(hsv, (tuple, list)) or len(hsv) != 3:
            raise InputError("hsv must be a tuple (rgb, lower, upper) of an (H, W, 3) uint8 image and two HSV bounds")
        mask = hsv_range(*hsv)
    else:
        mask = _as_bool(user_mask, "user_mask")  # type: ignore[arg-type]
    return clean_mask(mask, min_area=min_area, erode=erode, fill_holes=fill_holes)


def prompts_from_rough(mask: np.ndarray, options: SamplingOptions | None = None) -> list[ObjectPrompt]:
    """One prompt per blob of a rough mask, drawn as :func:`~samadapt.prompts.sampling.prompts_from_mask` draws them.

    The default options prompt with a box (``SamplingOptions()``, mode ``"box"``): a box only
    needs the blob's extent to be about right, while points need its outline to be right too
    (the river fine-tuning tutorial). An ``erode`` in the options acts on top of any erosion
    already done by :func:`rough_mask`.

    Args:
        mask: (H, W) bool or numbers (non-zero = object), e.g. from :func:`rough_mask`. Unlike
            a ground-truth mask, 255 here is object, not ignore.
        options: the prompt mode and how points and boxes are drawn; None for a tight box per blob.

    Returns:
        The prompts, largest blob first.

    Raises:
        InputError: on a bad mask or options (see ``prompts_from_mask``).
    """
    return prompts_from_mask(_as_bool(mask, "mask"), options or SamplingOptions())
