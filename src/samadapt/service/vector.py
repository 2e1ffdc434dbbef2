"""Masks in a window of a source's frame -> GeoJSON geometries in lng/lat of the source's body.

A mask is traced on pixel edges (4-connected parts, holes kept) in the pixels of its
window, offset to frame pixels, and every vertex is converted with ``Frame.to_lnglat``:
web mercator is not linear in latitude and a local raster's CRS may be anything, so no
affine shortcut is taken. Coordinates are rounded to 1e-8 degrees (about a millimetre on
Earth), far below a pixel at any zoom the service accepts, and returned as numpy arrays for
:func:`samadapt.service.wire.json_bytes` to encode.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes

if TYPE_CHECKING:
    from samadapt.service.frames import Frame

Window = tuple[int, int, int, int]

#: Decimal places of degrees kept in the output.
DEGREE_DECIMALS = 8

# A mask traced at the frame's origin has an identity transform, which rasterio reports as
# "not georeferenced"; frame pixels are what we want there. (A filter, not catch_warnings,
# which is not thread-safe and the service traces in worker threads.)
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module="rasterio.features")


def _rings(mask: np.ndarray, x0: int, y0: int) -> list[list[np.ndarray]]:
    """Polygons (each a list of rings, (K, 2) frame-pixel vertex arrays) of a bool mask whose top-left is (x0, y0)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = mask[r0:r1, c0:c1]
    # Trace only the mask's bounding box: the cost follows the object, not the window.
    transform = Affine.translation(x0 + c0, y0 + r0)
    return [
        [np.asarray(ring, dtype=np.float64) for ring in geom["coordinates"]]
        for geom, _ in shapes(crop.astype(np.uint8), mask=crop, connectivity=4, transform=transform)
    ]


def _to_geojson(polygons: list[list[np.ndarray]], frame: Frame) -> dict[str, Any]:
    """GeoJSON Polygon / MultiPolygon of frame-pixel polygons, every vertex converted to lng/lat.

    Rings stay (K, 2) float64 numpy arrays (views into one converted array): the response
    encoder writes them directly, which is much cheaper than building Python lists.
    """
    rings = [ring for poly in polygons for ring in poly]
    xy = np.concatenate(rings)
    lng, lat = frame.to_lnglat(xy[:, 0], xy[:, 1])
    coords = np.empty_like(xy)
    coords[:, 0], coords[:, 1] = lng, lat
    np.round(coords, DEGREE_DECIMALS, out=coords)
    out: list[list[np.ndarray]] = []
    start = 0
    for poly in polygons:
        converted = []
        for ring in poly:
            converted.append(coords[start : start + len(ring)])
            start += len(ring)
        out.append(converted)
    if len(out) == 1:
        return {"type": "Polygon", "coordinates": out[0]}
    return {"type": "MultiPolygon", "coordinates": out}


def mask_geometry(mask: np.ndarray, window: Window, frame: Frame) -> dict[str, Any] | None:
    """GeoJSON geometry in lng/lat of a mask over ``window``, or None when the mask is empty.

    Args:
        mask: (h, w) bool mask in the window's pixels (row 0 at the window's top).
        window: (x0, y0, x1, y1) of the mask in frame pixels.
        frame: the frame the window belongs to.

    Returns:
        A Polygon (one 4-connected part) or MultiPolygon dict, [lng, lat] vertices.
    """
    polygons = _rings(mask, window[0], window[1])
    return _to_geojson(polygons, frame) if polygons else None


def label_features(labels: np.ndarray, probabilities: np.ndarray, classes: dict[int, str], window: Window,
                   frame: Frame) -> list[dict[str, Any]]:
    """One GeoJSON Feature per 4-connected region of each non-background class.

    Args:
        labels: (h, w) class ids over ``window``; 0 is background and values outside
            ``classes`` (such as 255 for nodata) are skipped.
        probabilities: (C, h, w) class probabilities over ``window``.
        classes: class id -> name.
        window: (x0, y0, x1, y1) of the arrays in frame pixels.
        frame: the frame the window belongs to.

    Returns:
        Features with properties ``class``, ``name`` and ``probability`` (the mean
        probability of the class over the region).
    """
    from scipy import ndimage

    features = []
    for cls in sorted(int(c) for c in np.unique(labels)):
        if cls == 0 or cls >= len(probabilities) or (classes and cls not in classes):
            continue
        regions, count = ndimage.label(labels == cls)  # 4-connected, as the tracing
        if count == 0:
            continue
        means = ndimage.mean(probabilities[cls], labels=regions, index=np.arange(1, count + 1))
        objects = ndimage.find_objects(regions)
        for i, sl in enumerate(objects, start=1):
            region = regions[sl] == i
            polygons = _rings(region, window[0] + sl[1].start, window[1] + sl[0].start)
            if not polygons:
                continue
            features.append({
                "type": "Feature",
                "geometry": _to_geojson(polygons, frame),
                "properties": {"class": cls, "name": classes.get(cls, str(cls)),
                               "probability": round(float(means[i - 1]), 4)},
            })
    return features
