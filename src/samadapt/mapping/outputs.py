"""Write segmentation results: label PNGs, label GeoTIFFs and polygons (GeoPackage / GeoJSON).

Every writer refuses to replace an existing file unless ``overwrite=True``, creates missing
parent folders, and writes a temporary file in the target's folder that is renamed over the
target only once complete, so a failed or interrupted write never leaves a half-written output.

Masks are (N, H, W) bool arrays (or a :class:`~samadapt.predict.result.SegmentationResult`, whose
masks are cropped to their objects and stay so while written), label images (H, W) unsigned
integers (0 = background, i + 1 = object i), both in the pixel grid of the raster: row 0 at the
top, column 0 at the left. Polygons are in map coordinates when a transform is given, otherwise
in pixel coordinates (x right, y down, pixel edges at integers).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.features
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from samadapt._io import atomic_file, check_target
from samadapt.errors import InputError
from samadapt.imagery.crs import to_pyproj_crs
from samadapt.predict.result import MaskCrop, SegmentationResult

if TYPE_CHECKING:
    from typing import TypeAlias

    import geopandas as gpd
    import pyproj
    from rasterio.crs import CRS

    from samadapt.prompts.records import PromptRecords

    #: A CRS as rasterio or pyproj gives it, or as text or a code pyproj reads ("EPSG:32616", WKT, PROJ, 32616).
    CrsLike: TypeAlias = CRS | pyproj.CRS | str | int

PNG_SUFFIXES = (".png",)
GEOTIFF_SUFFIXES = (".tif", ".tiff")
POLYGON_SUFFIXES = (".gpkg", ".geojson", ".json")
OUTPUT_SUFFIXES = (*PNG_SUFFIXES, *GEOTIFF_SUFFIXES, *POLYGON_SUFFIXES)
GPKG_LAYER = "masks"
# Semi-major axes of Earth ellipsoids in use lie within 6,377-6,379 km and the authalic sphere
# is 6,371 km; anything far outside this range is another body (Mars is 3,396 km).
_EARTH_SEMI_MAJOR_M = (6_350_000.0, 6_400_000.0)
_TILE = 256


def _check_masks(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64)
    if masks.ndim != 3:
        raise InputError(f"masks must be an (N, H, W) array; got shape {masks.shape}")
    if masks.dtype != bool:
        raise InputError(f"masks must be bool; got dtype {masks.dtype}")
    if scores.shape != (masks.shape[0],):
        raise InputError(f"scores must have shape ({masks.shape[0]},), one per mask; got {scores.shape}")
    return masks, scores


def _mask_polygon(crop: MaskCrop, min_area_pixels: int) -> shapely.Geometry | None:
    """(Multi)Polygon in image pixel coordinates of the 4-connected parts of a mask of enough pixels."""
    # Polygonise only the bounding box of the mask: N masks cost N times their extent, not the image.
    tight = MaskCrop.tight(crop.mask, crop.row, crop.col)
    if tight.mask.size == 0:
        return None
    parts = [
        shapely.geometry.shape(geom)
        for geom, _ in rasterio.features.shapes(
            tight.mask.astype(np.uint8), mask=tight.mask, connectivity=4,
            transform=Affine.translation(tight.col, tight.row),
        )
    ]
    parts = [p for p in parts if p.area >= min_area_pixels]
    if not parts:
        return None
    geom = shapely.union_all(parts)
    return geom if geom.is_valid else shapely.make_valid(geom)


def vectorize(
    masks: np.ndarray,
    scores: np.ndarray,
    *,
    transform: Affine | None,
    crs: CrsLike | None,
    min_area_pixels: int = 0,
    simplify: float = 0.0,
) -> gpd.GeoDataFrame:
    """Turn masks into one (Multi)Polygon per object, holes kept.

    Args:
        masks: (N, H, W) bool, one mask per object, in the raster's pixel grid.
        scores: (N,) score of each mask.
        transform: The raster's affine transform (pixel col/row -> map x/y); None gives
            polygons in pixel coordinates (x right, y down, pixel edges at integers).
        crs: The raster's CRS (any form pyproj accepts, or a rasterio CRS), or None.
        min_area_pixels: Connected parts (4-connectivity) of fewer pixels are dropped; an
            object left with no part gets no row.
        simplify: Douglas-Peucker tolerance in output units (map units, or pixels without a
            transform); 0 keeps the exact pixel outlines.

    Returns:
        A GeoDataFrame with columns ``object`` (0-based index of the mask), ``score``, ``area``
        (map units squared, or pixels without a transform) and ``geometry``, with ``crs`` set;
        empty masks get no row.

    Raises:
        InputError: Masks not (N, H, W) bool, scores not (N,), or a negative option.
    """
    masks, scores = _check_masks(masks, scores)
    return vectorize_crops((MaskCrop(0, 0, m) for m in masks), scores, transform=transform, crs=crs,
                            min_area_pixels=min_area_pixels, simplify=simplify)


def vectorize_crops(
    crops: Iterable[MaskCrop],
    scores: np.ndarray,
    *,
    transform: Affine | None,
    crs: CrsLike | None,
    min_area_pixels: int = 0,
    simplify: float = 0.0,
) -> gpd.GeoDataFrame:
    """:func:`vectorize` of masks given as crops (``MaskCrop``: row and column of the mask's
    top-left pixel in the raster, and the mask), so N small objects of a large raster cost
    their own extents, not N rasters."""
    import geopandas as gpd  # imported here: geopandas is slow to import

    if min_area_pixels < 0 or simplify < 0:
        raise InputError(f"min_area_pixels and simplify must be >= 0; got {min_area_pixels} and {simplify}")
    scores = np.asarray(scores, dtype=np.float64)
    pyproj_crs = to_pyproj_crs(crs)
    objects: list[int] = []
    geoms: list[shapely.Geometry] = []
    for i, crop in enumerate(crops):
        geom = _mask_polygon(crop, min_area_pixels)
        if geom is None:
            continue
        if transform is not None:
            t = transform
            geom = shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])
        if simplify > 0:
            geom = geom.simplify(simplify, preserve_topology=True)
        objects.append(i)
        geoms.append(geom)
    return gpd.GeoDataFrame(
        {
            "object": np.array(objects, dtype=np.int64),
            "score": scores[objects].astype(np.float64),
            "area": np.array([g.area for g in geoms], dtype=np.float64),
        },
        geometry=gpd.GeoSeries(geoms, crs=pyproj_crs),
        crs=pyproj_crs,
    )


def _label_dtype(labels: np.ndarray, *, by_value: bool, reserve_max: bool) -> np.dtype[Any]:
    """uint8 or uint16 to store ``labels`` in.

    ``by_value``: the smallest that holds the values; otherwise uint8 only for uint8 / bool input
    (wider input stays uint16 so tiles of one map share a dtype). ``reserve_max`` keeps the top
    value of the dtype free for nodata.
    """
    if labels.dtype == bool:
        return np.dtype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label image must hold integers or bools; got dtype {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0:
        raise InputError(f"labels must be >= 0 (0 = background); got {low}")
    spare = 1 if reserve_max else 0
    if high <= 255 - spare and (by_value or labels.dtype.itemsize == 1):
        return np.dtype(np.uint8)
    if high <= 65535 - spare:
        return np.dtype(np.uint16)
    raise InputError(f"label {high} does not fit a 16-bit label image; at most {65535 - spare} objects can be written")


def write_mask_png(path: str | Path, mask: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a mask or a label image as a PNG.

    Args:
        path: The .png file to write.
        mask: (H, W) bool mask, saved as 0 / 255 uint8 so it is visible; or (H, W)
            non-negative integer labels, saved as uint8 when every label is <= 255, else uint16.
        overwrite: Replace ``path`` if it exists.

    Returns:
        ``path``.

    Raises:
        InputError: Not a 2-D array, negative labels or labels beyond 65535.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    from PIL import Image

    path = Path(path)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(f"a PNG mask must be (H, W); got shape {arr.shape}")
    if arr.dtype == bool:
        out = arr.astype(np.uint8) * np.uint8(255)
    else:
        out = arr.astype(_label_dtype(arr, by_value=True, reserve_max=False))
    with atomic_file(path, overwrite=overwrite) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return path


def write_mask_geotiff(
    path: str | Path,
    labels: np.ndarray,
    *,
    crs: CrsLike | None,
    transform: Affine | None,
    valid: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a label image as a single-band, deflate-compressed GeoTIFF.

    The band is uint8 with nodata 255 for uint8 / bool labels below 255, else uint16 with
    nodata 65535; pixels where ``valid`` is False get the nodata value, which is set as the dataset's
    nodata. Images of at least 256 x 256 pixels are tiled (256 x 256 blocks).

    Args:
        path: The .tif / .tiff file to write.
        labels: (H, W) bool, uint8 or uint16 (or other non-negative integer) labels,
            0 = background.
        crs: The raster's CRS, or None.
        transform: The raster's affine transform, or None for a plain image (the GeoTIFF then
            has no georeferencing).
        valid: (H, W) bool, False where the source raster had no data; None = all valid.
        overwrite: Replace ``path`` if it exists.

    Returns:
        ``path``.

    Raises:
        InputError: Bad shapes or labels, or a CRS without a transform.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"a label image must be (H, W); got shape {arr.shape}")
    if valid is not None and (np.shape(valid) != arr.shape or np.asarray(valid).dtype != bool):
        raise InputError(f"valid must be a bool array of the label image's shape {arr.shape}; got {np.shape(valid)}")
    if crs is not None and transform is None:
        raise InputError("a CRS was given without a transform; give both or neither")
    dtype = _label_dtype(arr, by_value=False, reserve_max=True)
    nodata = int(np.iinfo(dtype).max)
    out = arr.astype(dtype)
    if valid is not None:
        out[~np.asarray(valid)] = nodata
    height, width = out.shape
    map_crs = to_pyproj_crs(crs)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": dtype.name,
        "nodata": nodata,
        "compress": "deflate",
        "crs": map_crs.to_wkt() if map_crs is not None else None,
        "transform": transform,
    }
    if height >= _TILE and width >= _TILE:
        profile.update(tiled=True, blockxsize=_TILE, blockysize=_TILE)
    with atomic_file(path, overwrite=overwrite) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain image has no transform
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(out, 1)
    return path


def _check_earth(frame: gpd.GeoDataFrame) -> None:
    if frame.crs is None:
        raise InputError("the polygons have no CRS, so they cannot be reprojected to EPSG:4326 (lon/lat)")
    ellipsoid = frame.crs.ellipsoid
    axis = ellipsoid.semi_major_metre if ellipsoid is not None else None
    if axis is None or not (_EARTH_SEMI_MAJOR_M[0] <= axis <= _EARTH_SEMI_MAJOR_M[1]):
        size = "no ellipsoid" if axis is None else f"a body of radius {axis / 1000:,.0f} km"
        raise InputError(
            f"the raster's CRS is of {size}, not of Earth; reprojection to EPSG:4326 only applies to Earth rasters"
        )


def _record_crs_in_geojson(path: Path, frame: gpd.GeoDataFrame) -> None:
    """Add a ``crs`` member when GDAL wrote none (it writes one only for a CRS with a known code).

    Without it, readers assume WGS84 lon/lat and silently misplace every polygon. GDAL (hence
    QGIS, geopandas) reads a WKT given as the ``crs`` name back as the same CRS.
    """
    if frame.crs is None:
        return
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if "crs" in doc:
        return
    crs_member = {"type": "name", "properties": {"name": frame.crs.to_wkt()}}
    doc = {"type": doc.pop("type"), **({"name": doc.pop("name")} if "name" in doc else {}), "crs": crs_member, **doc}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def write_polygons(
    path: str | Path, gdf: gpd.GeoDataFrame, *, to_wgs84: bool = False, overwrite: bool = False
) -> Path:
    """Write polygons as a GeoPackage (layer "masks") or a GeoJSON file, CRS recorded.

    The CRS is written even when it has no EPSG code (e.g. a Mars CRS): GeoPackage stores its
    WKT, and GeoJSON gets a ``crs`` member with the WKT when GDAL would write none. GeoPackage
    geometries are written as MultiPolygon so the layer has one geometry type.

    Args:
        path: A .gpkg, .geojson or .json file.
        gdf: Polygons, e.g. from :func:`vectorize`, in the raster's CRS.
        to_wgs84: Reproject to EPSG:4326 (lon, lat) first; only for Earth CRSs.
        overwrite: Replace ``path`` if it exists.

    Returns:
        ``path``.

    Raises:
        InputError: Unknown suffix, or ``to_wgs84`` with no CRS or a CRS of another body.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import pyogrio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in POLYGON_SUFFIXES:
        raise InputError(f"polygon output {path} has suffix {suffix!r}; allowed are {', '.join(POLYGON_SUFFIXES)}")
    if to_wgs84:
        _check_earth(gdf)
        gdf = gdf.to_crs("EPSG:4326")
    is_gpkg = suffix == ".gpkg"
    with atomic_file(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        # Polygons of a raster without a CRS are written without one, as vectorize documents;
        # the CLI says so once. pyogrio would warn, with a source line, for every file.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.write_dataframe(
            gdf,
            tmp,
            driver="GPKG" if is_gpkg else "GeoJSON",
            layer=GPKG_LAYER if is_gpkg else None,
            promote_to_multi=True if is_gpkg else None,
            geometry_type="MultiPolygon" if is_gpkg or len(gdf) == 0 else None,
        )
        if not is_gpkg:
            _record_crs_in_geojson(tmp, gdf)
    return path


def write_segmentation(
    out: str | Path,
    result: SegmentationResult,
    *,
    crs: CrsLike | None,
    transform: Affine | None,
    valid: np.ndarray | None,
    overwrite: bool = False,
    to_wgs84: bool = False,
    min_area_pixels: int = 0,
    records: PromptRecords | None = None,
) -> Path:
    """Write a segmentation in the format its suffix names.

    ``.png``: a 0/255 mask for one object; for several, the label image (0 = background, i + 1 = object i).
    ``.tif`` / ``.tiff``: the label image as a GeoTIFF with the raster's CRS and transform and
    nodata where ``valid`` is False (no georeferencing for a plain image).
    ``.gpkg`` / ``.geojson`` / ``.json``: one polygon per object (see :func:`vectorize`), with
    ``instance_id`` = its value in the label image (object index + 1).

    Args:
        out: The output file; missing parent folders are created.
        result: The masks and scores (N,) to write; masks are read from their crops, so
            writing takes memory for one image-sized label image at most, not N masks.
        crs: The raster's CRS, or None.
        transform: The raster's affine transform, or None for a plain image.
        valid: (H, W) bool, False where the raster had no data, or None.
        overwrite: Replace ``out`` if it exists.
        to_wgs84: Polygons only: reproject to EPSG:4326.
        min_area_pixels: Polygons only: drop parts of fewer pixels.
        records: The prompts of the objects (one per object, in order): polygons get their
            ``prompt_id`` (and ``class``, ``class_name`` with classes); with classes, label
            images hold each object's class instead of its index + 1.

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: Unknown suffix, or bad arguments for the chosen writer.
        OutputExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"output {out} has suffix {suffix!r}; allowed are {', '.join(OUTPUT_SUFFIXES)}")
    check_target(out, overwrite=overwrite)  # fail before the work of vectorising
    by_class = records is not None and records.classes is not None
    if suffix in PNG_SUFFIXES:
        # one object: a visible 0/255 mask; several: the label image
        picture = result.mask(0) if len(result) == 1 and not by_class else _labels(result, records)
        return write_mask_png(out, picture, overwrite=overwrite)
    if suffix in GEOTIFF_SUFFIXES:
        labels = _labels(result, records)
        labels = labels.astype(np.uint8) if len(result) < 255 or by_class else labels
        return write_mask_geotiff(out, labels, crs=crs, transform=transform, valid=valid, overwrite=overwrite)
    frame = vectorize_crops(result.crops, result.scores, transform=transform, crs=crs,
                             min_area_pixels=min_area_pixels, simplify=0.0)
    frame = with_phrases(frame, result)
    frame.insert(1, "instance_id", frame["object"].to_numpy() + 1)  # the object's value in the label image
    if records is not None:
        frame = with_prompts(frame, records)
    return write_polygons(out, frame, to_wgs84=to_wgs84, overwrite=overwrite)


def _labels(result: SegmentationResult, records: PromptRecords | None) -> np.ndarray:
    """The label image; with classes, each object's class id instead of its index + 1."""
    labels = result.label_image()
    if records is None or records.classes is None:
        return labels
    lut = np.array([0, *records.classes], dtype=np.uint8)
    return lut[labels]


def with_prompts(frame: gpd.GeoDataFrame, records: PromptRecords) -> gpd.GeoDataFrame:
    """Polygons with the ``prompt_id`` of each object's prompt (and its ``class`` and, for named
    classes, ``class_name``); ``frame``'s ``object`` column indexes ``records``."""
    objects = frame["object"].to_numpy()
    frame = frame.copy()
    ids = [records.ids[i] for i in objects]
    frame.insert(1, "prompt_id", np.array(ids, dtype=np.int64 if all(isinstance(v, int) for v in ids) else object))
    if records.classes is not None:
        frame.insert(2, "class", np.array([records.classes[i] for i in objects], dtype=np.int64))
        frame.insert(3, "class_name", np.array([(records.names or {}).get(records.classes[i], "") for i in objects],
                                               dtype=object))
    return frame


def with_phrases(frame: gpd.GeoDataFrame, result: SegmentationResult) -> gpd.GeoDataFrame:
    """Polygons of a text search with two more columns: ``phrase`` and ``detector_score`` of each object.

    ``frame`` is :func:`vectorize`'s output for ``result`` (its ``object`` column indexes the
    result); a result of other prompts comes back unchanged.
    """
    if result.phrases is None or result.detector_scores is None:
        return frame
    objects = frame["object"].to_numpy()
    frame = frame.copy()
    frame.insert(1, "phrase", np.array([result.phrases[i] for i in objects], dtype=object))
    frame.insert(2, "detector_score", result.detector_scores[objects].astype(np.float64))
    return frame
