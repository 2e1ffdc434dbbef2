"""Read any image or raster into what SAM sees: an (H, W, 3) uint8 RGB array plus validity.

Every format (PNG, JPEG, TIFF, GeoTIFF, anything GDAL opens) goes through one code path,
:func:`read_image`, built on rasterio. Numpy arrays from Python callers go through
:func:`from_array`, which shares the band choice and the stretch (:mod:`samadapt.imagery.stretch`).

Conventions used throughout:

* Arrays handed to the stretch are band-first, (C, H, W); the image SAM sees is (H, W, 3)
  RGB, rows top to bottom, columns left to right.
* Bands are numbered from 1, as in GDAL and on the command line (``--bands 4,3,2``).
* ``transform`` maps pixel (col, row) to map (x, y) in the raster's CRS, with (0, 0) the
  top-left corner of the top-left pixel of the array as read (of the window, for a window
  read). Plain images carry ``crs=None`` and ``transform=None``; nothing assumes Earth.
* A pixel is invalid where the source says so (nodata in all chosen bands, a dataset mask
  or alpha of 0) or where any chosen band is NaN or infinite. Invalid pixels are left out
  of the stretch statistics and are 0 in ``pixels``.
* A file's band axis is known (rasterio reads bands first); only arrays handed to
  :func:`from_array` without ``channel_axis`` have theirs guessed, and only when one
  reading fits.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError, WindowError
from rasterio.windows import Window

from samadapt.errors import InputError, InputFileError
from samadapt.imagery.physical import physical_values
from samadapt.imagery.sources import RasterSource, describe_open_error, open_source, remote_read_error, resolve_source
from samadapt.imagery.stretch import (
    AUTO_PERCENTILES,
    Stretch,
    check_stretch,
    choose_bands,
    finite_pixels,
    looks_like_alpha,
    scale_to_uint8,
    stretch_limits,
    to_rgb8,
)


@dataclass(frozen=True, eq=False)
class GeoImage:
    """An image as SAM sees it, with where it came from and where it lies on its body.

    Attributes:
        pixels: (H, W, 3) uint8 RGB, what the model sees; 0 where ``valid`` is False.
        valid: (H, W) bool, False where the input is nodata, masked, alpha 0, NaN or inf.
        crs: coordinate reference system of ``transform`` (any body: Earth, Mars, ...),
            or None for plain images.
        transform: affine map from pixel (col, row) to map (x, y), origin at the top-left
            corner of ``pixels``; None when the source is not georeferenced.
        nodata: the source's nodata value (of the first chosen band), or None.
        source: the file read (a str for URLs, ``/vsi*`` paths and STAC items), or None for arrays.
        bands: 1-based indexes of the source bands shown, in R, G, B order (one index
            when a single band is repeated to grey).
    """

    pixels: np.ndarray
    valid: np.ndarray
    crs: CRS | None = None
    transform: Affine | None = None
    nodata: float | None = None
    source: Path | str | None = None
    bands: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self) -> None:
        pixels, valid = self.pixels, self.valid
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise InputError(f"GeoImage.pixels must be an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
        if valid.shape != pixels.shape[:2] or valid.dtype != np.bool_:
            raise InputError(
                f"GeoImage.valid must be an (H, W) bool array of shape {pixels.shape[:2]}, "
                f"got {valid.dtype} {valid.shape}"
            )

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.pixels.shape[1])

    @property
    def georeferenced(self) -> bool:
        """True when both ``crs`` and ``transform`` are known."""
        return self.crs is not None and self.transform is not None


def _nodata_invalid(data: np.ndarray, nodatavals: Sequence[float | None]) -> np.ndarray:
    """(H, W) bool, True where every band of (C, H, W) ``data`` that has a nodata value equals it."""
    pairs = [(band, value) for band, value in zip(data, nodatavals, strict=False)
             if value is not None and not math.isnan(value)]
    if not pairs:
        return np.zeros(data.shape[1:], dtype=bool)
    invalid = np.ones(data.shape[1:], dtype=bool)
    for band, value in pairs:
        invalid &= band == value
    return invalid


def _read_window(window: Window | None, height: int, width: int, name: str) -> Window | None:
    """Snap a window to whole pixels and clip it to the raster; reject empty results."""
    if window is None:
        return None
    if not isinstance(window, Window):
        raise InputError(f"window must be a rasterio.windows.Window, got {type(window).__name__}")
    col0, row0 = math.floor(window.col_off), math.floor(window.row_off)
    col1, row1 = math.ceil(window.col_off + window.width), math.ceil(window.row_off + window.height)
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"window {window} is empty; give a window with positive width and height")
    try:
        return Window(col0, row0, col1 - col0, row1 - row0).intersection(Window(0, 0, width, height))
    except WindowError:
        raise InputError(
            f"window {window} lies outside {name}, which is {width} x {height} pixels (cols x rows)"
        ) from None


@contextmanager
def pixel_read_errors(
    path: str | Path, *, window: Window | None = None, bands: Sequence[int] | None = None
) -> Iterator[None]:
    """Turn GDAL's failure to read pixels of an open raster into one :class:`InputFileError` sentence.

    A file cut short (an interrupted download or copy) still opens, since its header is
    whole; it fails only when a missing block is read, and rasterio then says no more than
    "Read failed. See previous exception for details.". Wrap every read of pixels, masks
    included, in this: the message names the file, says it is damaged, and gives the bands,
    the window and GDAL's own reason.

    Args:
        path: the file, as the user named it (``dataset.name``).
        window: the window being read (pixels), or None for the whole raster.
        bands: the 1-based bands being read, or None.

    Raises:
        InputFileError: when a read inside the block fails.
    """
    try:
        yield
    except RasterioIOError as exc:
        remote = remote_read_error(str(path), exc)
        if remote is not None:
            raise remote from None
        what = "the raster"
        if bands:
            what = f"band{'s' if len(bands) > 1 else ''} {', '.join(str(int(b)) for b in bands)}"
        where = ""
        if window is not None:
            where = (f" in the window at column {int(window.col_off)}, row {int(window.row_off)}, "
                     f"{int(window.width)} x {int(window.height)} pixels")
        raise InputFileError(
            f"{path} is damaged or truncated: {what} could not be read{where} ({_gdal_reason(exc, path)}); "
            "copy or download it again"
        ) from None


def _gdal_reason(exc: RasterioIOError, path: str | Path) -> str:
    """GDAL's own words for a failed read (rasterio keeps them in the cause), without the file name."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    reason = str(cause).strip().rstrip(".")
    for name in (str(path), Path(path).name):
        if reason.startswith(f"{name}, "):
            reason = reason[len(name) + 2:]
            break
    return f"GDAL: {reason}"


def read_image(
    path: str | Path | RasterSource,
    *,
    bands: Sequence[int] | None = None,
    stretch: Stretch = "auto",
    window: Window | None = None,
    asset: str | None = None,
) -> GeoImage:
    """Read an image or raster (PNG, JPEG, TIFF, GeoTIFF, JPEG 2000, ISIS3, PDS4, ...) into a :class:`GeoImage`.

    The source may be a local file, an ``https://`` / ``s3://`` URL, a ``/vsi*`` path or a STAC
    item (see :mod:`samadapt.imagery.sources`); remote rasters are read by window. Bands with a
    scale or offset are read as physical values (``raw * scale + offset``) before the stretch,
    and ISIS3 special pixels are invalid (see :mod:`samadapt.imagery.physical`).

    Band choice without ``bands``: 1 band is repeated to grey; 2 bands are grey + alpha
    (band 2 is used only as validity, 0 = invalid) when band 2 is marked alpha or holds only
    0 and its type's maximum (an alpha band written without its tag), otherwise band 1 is
    shown grey and band 2 is left out (two data bands, e.g. SAR VV / VH: pick one with
    ``bands``); 3 bands are RGB; 4 bands are RGB + alpha when band 4 is marked alpha,
    otherwise bands 1, 2, 3; more bands use 1, 2, 3.

    Args:
        path: the file, URL, virtual path or STAC item to read.
        bands: 1-based band indexes to show, 1 or 3 of them (e.g. ``(4, 3, 2)``).
        stretch: see :func:`samadapt.imagery.stretch.to_rgb8`; statistics come from the valid pixels read (of the
            window, for a window read).
        window: read only this window (col_off, row_off, width, height in pixels). It is
            snapped outward to whole pixels and clipped to the raster; the returned
            transform is the window's own.
        asset: the asset of a STAC item to read (default: see :func:`samadapt.imagery.sources.resolve_source`).

    Returns:
        The image with (H, W) = the window's or raster's size.

    Raises:
        InputFileError: if the file is missing, is not a readable image or raster, or is
            damaged or truncated where its pixels are read; a RemoteSourceError (one) when a
            server refuses, fails or is too slow.
        InputError: on an unknown band, a band count other than 1 or 3, a bad stretch, or
            an empty window or one outside the raster.
    """
    source = resolve_source(path, asset)
    stretch = check_stretch(stretch)
    # Plain images have no geotransform; rasterio warns and reports identity. We report None.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_source(source) as dataset:
            try:
                return _read_dataset(dataset, source, bands, stretch, window)
            except RasterioError as exc:
                raise describe_open_error(source, exc) from None


def _read_dataset(
    dataset: rasterio.io.DatasetReader,
    source: RasterSource,
    bands: Sequence[int] | None,
    stretch: tuple[float, float] | None | Literal["auto"],
    window: Window | None,
) -> GeoImage:
    path = source.text
    alpha_last = dataset.count == 4 and dataset.colorinterp[3] == ColorInterp.alpha
    chosen, alpha = choose_bands(bands, dataset.count, alpha_last, source.name)
    window = _read_window(window, dataset.height, dataset.width, source.name)
    with pixel_read_errors(path, window=window, bands=chosen):
        data = dataset.read(list(chosen), window=window)
    nodatavals = [dataset.nodatavals[b - 1] for b in chosen]
    valid = ~_nodata_invalid(data, nodatavals) & finite_pixels(data)
    data, special = physical_values(dataset, data, chosen)
    valid &= ~special
    # Per-dataset masks (internal mask bands, alpha GDAL knows about) apply to every band.
    flags = dataset.mask_flag_enums
    masked = [b for b in chosen if MaskFlags.per_dataset in flags[b - 1]]
    if masked:
        with pixel_read_errors(path, window=window, bands=masked[:1]):
            valid &= dataset.read_masks(masked[0], window=window) > 0
    if alpha is not None:
        with pixel_read_errors(path, window=window, bands=(alpha,)):
            band = dataset.read(alpha, window=window)
        if dataset.colorinterp[alpha - 1] == ColorInterp.alpha or looks_like_alpha(band):
            valid &= band > 0
    pixels = to_rgb8(data, valid, stretch=stretch)

    # GDAL reports the identity when a file has no geotransform (plain images, GCP-only
    # rasters); a real map transform is never the identity, so that means "none".
    transform = None
    if dataset.transform != Affine.identity():
        transform = dataset.transform
        if window is not None:
            transform = transform @ Affine.translation(window.col_off, window.row_off)
    nodata = nodatavals[0]
    return GeoImage(
        pixels=pixels,
        valid=valid,
        crs=dataset.crs if dataset.crs else None,
        transform=transform,
        nodata=None if nodata is None else float(nodata),
        source=source.local if source.local is not None else source.text,
        bands=chosen,
    )


def from_array(
    array: np.ndarray,
    *,
    crs: CRS | str | None = None,
    transform: Affine | None = None,
    nodata: float | None = None,
    stretch: Stretch = "auto",
    bands: Sequence[int] | None = None,
    valid: np.ndarray | None = None,
    channel_axis: Literal["first", "last"] | None = None,
) -> GeoImage:
    """Wrap a numpy image (Python API) as a :class:`GeoImage`, with the same rules as files.

    Args:
        array: (H, W), (H, W, C) or (C, H, W). For 3-D input without ``channel_axis`` the
            channel axis is the first or last one, whichever is smaller than both other
            axes, provided the other end axis is longer than 3 (else it too could hold an
            image's bands: grey, grey + alpha, RGB); otherwise, e.g. 3 x 3 x 3 or a
            1 x 5 x 3 strip, pass ``channel_axis``. Code that knows its layout (a window
            read for a model is (H, W, 3)) should always pass it.
        crs: CRS of ``transform`` (a :class:`rasterio.crs.CRS` or anything
            ``CRS.from_user_input`` accepts, e.g. ``"EPSG:32616"`` or a PROJ/WKT string).
        transform: pixel (col, row) -> map (x, y) affine, origin at the top-left corner.
        nodata: value that marks invalid pixels when all chosen channels equal it.
        stretch: see :func:`samadapt.imagery.stretch.to_rgb8`.
        bands: 1-based channel indexes to show (1 or 3); defaults as in
            :func:`read_image`, except that a 4th channel is never taken as alpha.
        valid: optional (H, W) bool, False where the caller knows pixels are invalid.
        channel_axis: ``"first"`` or ``"last"`` to say where channels are in 3-D input.

    Returns:
        The image; ``source`` is None.

    Raises:
        InputError: on a shape, band, CRS or stretch that cannot be used.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[np.newaxis]
    elif array.ndim == 3:
        array = _channels_first(array, channel_axis)
    else:
        raise InputError(f"an image array must be (H, W), (H, W, C) or (C, H, W), got shape {array.shape}")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise InputError(f"the image array is empty, shape {array.shape}")
    chosen, alpha = choose_bands(bands, array.shape[0], False, "the array")
    data = array[[b - 1 for b in chosen]]
    mask = ~_nodata_invalid(data, [nodata] * len(chosen)) & finite_pixels(data)
    if alpha is not None and looks_like_alpha(array[alpha - 1]):
        mask &= array[alpha - 1] > 0
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != mask.shape:
            raise InputError(f"valid has shape {valid.shape} but the image is {mask.shape} (rows, cols)")
        mask &= valid.astype(bool)
    if crs is not None and not isinstance(crs, CRS):
        try:
            crs = CRS.from_user_input(crs)
        except RasterioError as exc:
            raise InputError(f"crs {crs!r} is not a CRS rasterio understands ({exc})") from None
    if transform is not None and not isinstance(transform, Affine):
        raise InputError(f"transform must be an affine.Affine, got {type(transform).__name__}")
    return GeoImage(
        pixels=to_rgb8(data, mask, stretch=stretch),
        valid=mask,
        crs=crs,
        transform=transform,
        nodata=None if nodata is None else float(nodata),
        source=None,
        bands=chosen,
    )


#: An end axis this short could hold an image's bands (grey, grey + alpha, RGB).
_MAX_IMAGE_BANDS = 3


def _channels_first(array: np.ndarray, channel_axis: Literal["first", "last"] | None) -> np.ndarray:
    """Return a 3-D array as (C, H, W), guessing the channel axis only when it is unambiguous."""
    a, b, c = array.shape
    if channel_axis is None:
        # An end axis counts as the bands when it is shorter than both others and the other
        # end axis could not be the bands instead; a 1 x 5 RGB strip, (1, 5, 3), is not
        # taken for one band of 5 x 3 pixels.
        if a < min(b, c) and c > _MAX_IMAGE_BANDS:
            channel_axis = "first"
        elif c < min(a, b) and a > _MAX_IMAGE_BANDS:
            channel_axis = "last"
        else:
            first, last = f"{a} band(s) of {b} x {c} pixels", f"{c} band(s) of {a} x {b} pixels"
            readings = f": it reads as {first} or {last}" if first != last else ""
            raise InputError(
                f"cannot tell the channel axis of an array of shape {array.shape}{readings}; pass "
                "channel_axis='first' for (bands, rows, cols) or 'last' for (rows, cols, bands)"
            )
    if channel_axis == "first":
        return array
    if channel_axis == "last":
        return np.moveaxis(array, -1, 0)
    raise InputError(f"channel_axis must be 'first', 'last' or None, got {channel_axis!r}")


def read_bands(path: str | Path | RasterSource, bands: Sequence[int], *, stretch: Stretch = "auto",
               asset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read any number of bands, each scaled to 0-255, for models that take more than RGB.

    The source and the values are read as :func:`read_image` reads them: any source
    :func:`~samadapt.imagery.sources.resolve_source` takes, physical values (scale and offset
    applied), nodata, masks and ISIS3 special pixels invalid.

    Args:
        path: the file, URL, virtual path or STAC item.
        bands: 1-based band indexes, any count (e.g. all four of an RGB + NIR image).
        stretch: as in :func:`read_image`; per-band percentiles over valid pixels.
        asset: the asset of a STAC item.

    Returns:
        (H, W, C) uint8 pixels in the order of ``bands`` (0 where invalid) and the (H, W) bool
        validity mask.

    Raises:
        InputFileError: the file cannot be read, or is damaged or truncated.
        InputError: a band does not exist.
    """
    data, valid = read_physical_bands(path, bands, asset=asset)
    mode = check_stretch(stretch)
    if mode == "auto":
        mode = None if data.dtype == np.uint8 else AUTO_PERCENTILES
    if mode is None:
        scaled = np.clip(np.nan_to_num(data.astype(np.float64)), 0, 255).round().astype(np.uint8)
    else:
        scaled = scale_to_uint8(data, stretch_limits(data, valid, mode))
    scaled[:, ~valid] = 0
    return np.moveaxis(scaled, 0, -1).copy(), valid


def read_physical_bands(path: str | Path | RasterSource, bands: Sequence[int], *,
                        asset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) physical values of ``bands`` of a whole raster and its (H, W) validity (see :func:`read_bands`).

    Raises:
        InputFileError: the source cannot be read.
        InputError: a band does not exist.
    """
    source = resolve_source(path, asset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_source(source) as ds:
            for b in bands:
                if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= ds.count:
                    raise InputError(
                        f"band {b!r} does not exist: {source.name} has {ds.count} band(s), numbered 1 to {ds.count}"
                    )
            try:
                with pixel_read_errors(source.text, bands=bands):
                    data = ds.read(list(bands))
                    valid = (ds.read_masks(list(bands)) != 0).all(axis=0)
                nodatavals = [ds.nodatavals[b - 1] for b in bands]
                valid &= ~_nodata_invalid(data, nodatavals) & finite_pixels(data)
                data, special = physical_values(ds, data, bands)
            except RasterioError as exc:
                raise describe_open_error(source, exc) from None
    return data, valid & ~special
