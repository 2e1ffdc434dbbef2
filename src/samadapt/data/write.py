"""Writing samples (image, mask or both) and ``classes.json`` into a dataset folder.

The layout written is the one :mod:`samadapt.data.dataset` reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from samadapt._io import atomic_file, write_json
from samadapt.data.dataset import (
    CLASSES_FILE,
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    MASK_SUFFIXES,
    MASKS_DIR,
    check_classes,
    scan_files,
)
from samadapt.errors import InputError, OutputExistsError
from samadapt.imagery.read import GeoImage
from samadapt.mapping.outputs import write_mask_geotiff, write_mask_png

__all__ = ["as_label_mask", "check_stem", "write_classes", "write_sample"]


def write_classes(root: str | Path, classes: Mapping[int, str], *, overwrite: bool = False) -> Path:
    """Write ``root/classes.json`` (``{"0": "background", "1": ...}``).

    Args:
        root: the dataset folder.
        classes: class id (0-254) -> name; 0 is added as "background" when missing.
        overwrite: replace an existing ``classes.json``.

    Returns:
        The path written.

    Raises:
        InputError: an id outside 0-254 or an empty name.
        OutputExistsError: the file exists and ``overwrite`` is False.
    """
    root = Path(root)
    checked = check_classes(classes, "classes")
    return write_json(root / CLASSES_FILE, {str(k): v for k, v in checked.items()}, overwrite=overwrite)


def check_stem(stem: str) -> None:
    if not isinstance(stem, str) or not stem or stem.startswith(".") or any(c in stem for c in '/\\:*?"<>|\0'):
        raise InputError(
            f"stem {stem!r} cannot name a file; use letters, digits, '_', '-' and '.' (not at the start)"
        )


def as_label_mask(mask: np.ndarray) -> np.ndarray:
    """Check a mask and return it as (H, W) uint8 class ids (bool True becomes class 1).

    Raises:
        InputError: not 2-D, not integer or bool, or values outside 0..255.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"a mask must be an (H, W) array of class ids; got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise InputError(f"a mask must hold integer class ids (0-254, 255 = ignore); got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > IGNORE_INDEX):
        raise InputError(
            f"mask values {int(arr.min())}..{int(arr.max())} are out of range; class ids are 0-254, 255 = ignore"
        )
    return arr.astype(np.uint8)


def _raster_header(path: Path) -> tuple[int, int, Any, Affine | None]:
    """(height, width, crs, transform or None) of an existing image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            transform = None if src.transform == Affine.identity() else src.transform
            return src.height, src.width, (src.crs if src.crs else None), transform


def _write_image(path: Path, image: GeoImage, overwrite: bool) -> None:
    valid = image.valid
    if path.suffix == ".png":
        from PIL import Image

        # PNG keeps no georeferencing; invalid pixels become transparent so read_image sees them.
        pixels = image.pixels if valid.all() else np.dstack([image.pixels, valid.astype(np.uint8) * 255])
        with atomic_file(path, overwrite=overwrite) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        return
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": image.height, "width": image.width, "count": 3, "dtype": "uint8",
        "photometric": "RGB", "compress": "deflate",
    }
    if image.georeferenced:
        profile.update(crs=image.crs, transform=image.transform)
    if image.height >= 256 and image.width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_file(path, overwrite=overwrite) as tmp:
        with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(np.moveaxis(image.pixels, 2, 0))
                if not valid.all():  # an internal mask, not nodata: black pixels stay valid
                    dst.write_mask(valid.astype(np.uint8) * 255)


def _others(folder: Path, stem: str, suffixes: Sequence[str], keep: Path) -> list[Path]:
    return [p for p in scan_files(folder, suffixes).get(stem, []) if p.name != keep.name]


def write_sample(
    root: str | Path,
    stem: str,
    image: GeoImage | None,
    mask: np.ndarray | None,
    *,
    image_format: Literal["tif", "png"] = "tif",
    overwrite: bool = False,
) -> tuple[Path | None, Path | None]:
    """Write one sample (image, mask or both) into a dataset folder.

    ``"tif"`` writes the image as a 3-band uint8 GeoTIFF keeping its CRS and transform (invalid
    pixels in an internal mask) and the mask as a GeoTIFF on the same grid (255 = ignore =
    nodata). ``"png"`` writes a PNG image (RGBA when some pixels are invalid; georeferencing
    is dropped) and a PNG mask. A mask written alone for an existing image takes that image's
    CRS and transform. A bool mask is written as 0 / 1 (class 1), not 0 / 255.

    Args:
        root: the dataset folder (created if missing).
        stem: the sample's file name without suffix.
        image: the image, or None to write only the mask.
        mask: (H, W) class ids (0-254, 255 = ignore) or bool, or None for an unlabelled image.
        image_format: ``"tif"`` or ``"png"``; the mask uses the same format.
        overwrite: replace this stem's existing files (of any suffix).

    Returns:
        (image path or None, mask path or None) of the files written.

    Raises:
        InputError: bad stem, format or mask, or a mask whose shape is not the image's.
        OutputExistsError: a file of this stem exists and ``overwrite`` is False.
    """
    root = Path(root)
    check_stem(stem)
    if image_format not in ("tif", "png"):
        raise InputError(f"image_format {image_format!r} is not allowed; use 'tif' or 'png'")
    if image is None and mask is None:
        raise InputError(f"nothing to write for {stem!r}; give an image, a mask or both")
    image_path = root / IMAGES_DIR / f"{stem}.{image_format}"
    mask_path = root / MASKS_DIR / f"{stem}.{image_format}"
    labels = None if mask is None else as_label_mask(mask)
    crs, transform, size = None, None, None
    if image is not None:
        crs, transform, size = image.crs, image.transform, (image.height, image.width)
    else:
        existing = scan_files(root / IMAGES_DIR, IMAGE_SUFFIXES).get(stem, [])
        if existing:
            height, width, crs, transform = _raster_header(existing[0])
            size = (height, width)
    if transform is None:
        crs = None
    if labels is not None and size is not None and labels.shape != size:
        raise InputError(f"mask of {stem!r} is {labels.shape} (rows, cols) but its image is {size}; they must match")
    stale: list[Path] = []
    for written, data, suffixes in ((image_path, image, IMAGE_SUFFIXES), (mask_path, labels, MASK_SUFFIXES)):
        if data is None:
            continue
        others = _others(written.parent, stem, suffixes, written)
        if others and not overwrite:
            raise OutputExistsError(f"{others[0]} exists for stem {stem!r}; pass overwrite=True to replace it")
        if written.exists() and not overwrite:
            raise OutputExistsError(f"{written} exists; pass overwrite=True to replace it")
        stale += others
    if image is not None:
        _write_image(image_path, image, overwrite)
    if labels is not None:
        if image_format == "png":
            write_mask_png(mask_path, labels, overwrite=overwrite)
        else:
            ignore = labels == IGNORE_INDEX
            write_mask_geotiff(
                mask_path, np.where(ignore, 0, labels).astype(np.uint8), crs=crs, transform=transform,
                valid=~ignore if ignore.any() else None, overwrite=overwrite,
            )
    for path in stale:
        path.unlink(missing_ok=True)
    return (image_path if image is not None else None, mask_path if labels is not None else None)
