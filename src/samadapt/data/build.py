"""Build a dataset from a raster and polygons: tile the raster, burn the polygons into masks.

The raster is read window by window (never whole), each tile written as a GeoTIFF with its
own transform, the raster's CRS, bands, dtype and nodata, so nothing is lost; stretching to
what SAM sees happens later, in :func:`samadapt.imagery.read.read_image`. The polygons are
reprojected to the raster's CRS (which need not have an EPSG code) and burnt into each tile's
grid with :func:`rasterio.features.rasterize`, so the tiles' masks put together equal the
whole raster burnt at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from samadapt.data.dataset import (
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    IMAGES_DIR,
    MASKS_DIR,
)
from samadapt.data.manifest import DATASET, output_folder
from samadapt.data.write import check_stem, write_classes
from samadapt.errors import InputError, InputFileError
from samadapt.imagery.crs import to_pyproj_crs
from samadapt.imagery.sources import RasterSource, describe_open_error, is_remote_or_virtual, resolve_source, source_env
from samadapt.imagery.tiling import tile_offsets
from samadapt.mapping.outputs import write_mask_geotiff

if TYPE_CHECKING:
    import geopandas as gpd
    import rasterio.io

    from samadapt.imagery.crs import CRSLike

_POLYGONAL = ("Polygon", "MultiPolygon")
_BLOCK = 256


def _read_vectors(path: Path) -> gpd.GeoDataFrame:
    import geopandas as gpd

    if not path.exists():
        raise InputFileError(f"vector file not found: {path}")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError / DataLayerError types
        raise InputFileError(
            f"{path} is not a readable vector file ({exc}); give a GeoPackage, GeoJSON or shapefile"
        ) from None
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = frame.geometry.geom_type
    polygonal = kinds.isin(_POLYGONAL)
    if not polygonal.any():
        found = ", ".join(sorted(set(kinds))) or "no geometries"
        raise InputError(f"{path} holds no polygons ({found}); buffer lines or points into polygons first")
    if not polygonal.all():
        dropped = ", ".join(sorted(set(kinds[~polygonal])))
        warnings.warn(f"{path}: {int((~polygonal).sum())} non-polygon features ({dropped}) are left out", stacklevel=3)
    return frame[polygonal]


def _to_raster_crs(frame: gpd.GeoDataFrame, raster_crs: CRSLike | None, vector_crs: CRSLike | None,
                   path: Path) -> gpd.GeoDataFrame:
    """Reproject ``frame`` to the raster's CRS, settling a missing or impossible vector CRS first."""
    if vector_crs is not None:
        frame = frame.set_crs(to_pyproj_crs(vector_crs), allow_override=True)
    elif frame.crs is None:
        if raster_crs is not None:
            warnings.warn(f"{path} has no CRS; its coordinates are taken to be in the raster's CRS", stacklevel=3)
            frame = frame.set_crs(to_pyproj_crs(raster_crs))
    elif frame.crs.is_geographic:
        # GeoJSON without a "crs" member is read as lon/lat even when it holds metres;
        # coordinates beyond +-360 / +-90 cannot be degrees, so they must be the raster's.
        x0, y0, x1, y1 = frame.total_bounds
        if raster_crs is not None and (x0 < -360 or x1 > 360 or y0 < -90.001 or y1 > 90.001):
            warnings.warn(
                f"{path} says its CRS is {frame.crs.name} but its coordinates ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) "
                "are not degrees; they are taken to be in the raster's CRS (pass vector_crs to say otherwise)",
                stacklevel=3,
            )
            frame = frame.set_crs(to_pyproj_crs(raster_crs), allow_override=True)
    if raster_crs is None:
        if frame.crs is not None:
            warnings.warn("the raster has no CRS; polygon coordinates are used as they are", stacklevel=3)
        return frame
    return frame.to_crs(to_pyproj_crs(raster_crs))


def _class_values(
    frame: gpd.GeoDataFrame, class_field: str | None, classes: Mapping[str, int] | None, path: Path
) -> tuple[np.ndarray, dict[int, str]]:
    """(burn value per feature, class id -> name for classes.json)."""
    if class_field is None:
        if classes is not None:
            raise InputError("classes maps values of class_field to ids; give class_field too, or leave classes out")
        return np.ones(len(frame), dtype=np.uint8), dict(DEFAULT_CLASSES)
    fields = [c for c in frame.columns if c != frame.geometry.name]
    if class_field not in fields:
        listed = ", ".join(fields) or "none"
        raise InputError(f"class_field {class_field!r} is not a field of {path}; its fields are: {listed}")
    column = frame[class_field]
    if column.isna().any():
        raise InputError(
            f"{int(column.isna().sum())} feature(s) of {path} have no {class_field!r} value; "
            "fill them or remove those features"
        )
    numbers = column.to_numpy()
    integral = column.dtype.kind in "iu" or (column.dtype.kind == "f" and bool(np.all(numbers == np.round(numbers))))
    if classes is None and integral:  # codes already (e.g. a shapefile's 1, 2, 3, possibly stored as reals)
        ids = numbers.astype(np.int64)
        bad = sorted({int(v) for v in ids if not 1 <= v < IGNORE_INDEX})
        if bad:
            raise InputError(
                f"field {class_field!r} holds {bad[:5]}; integer class ids must be 1-254, or pass classes to map them"
            )
        return ids.astype(np.uint8), {0: "background", **{int(v): str(v) for v in sorted(set(ids.tolist()))}}
    names = np.array([str(int(v)) for v in numbers]) if integral else column.astype(str).to_numpy()
    if classes is None:
        unique = sorted(set(names.tolist()))
        if len(unique) >= IGNORE_INDEX:
            raise InputError(f"field {class_field!r} has {len(unique)} distinct values; at most 254 classes fit a mask")
        mapping = {name: i + 1 for i, name in enumerate(unique)}
    else:
        mapping = {}
        for key, value in classes.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < IGNORE_INDEX:
                raise InputError(f"classes[{key!r}] = {value!r} is not allowed; class ids are 1-254 (0 = background)")
            mapping[str(key)] = int(value)
        missing = sorted(set(names.tolist()) - mapping.keys())
        if missing:
            raise InputError(
                f"values {', '.join(repr(m) for m in missing[:5])} of field {class_field!r} are not in classes; "
                "add them or remove those features"
            )
    table: dict[int, list[str]] = {}
    for name, class_id in mapping.items():
        table.setdefault(class_id, []).append(name)
    return (
        np.array([mapping[n] for n in names], dtype=np.uint8),
        {0: "background", **{i: ", ".join(sorted(table[i])) for i in sorted(table)}},
    )


def _check_options(tile_size: int, overlap: int, bands: Sequence[int] | None, count: int,
                   raster: Path | RasterSource) -> list[int]:
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise InputError(f"tile_size={tile_size!r} is not allowed; give a whole number of pixels >= 1, e.g. 512")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile_size:
        raise InputError(f"overlap={overlap!r} is not allowed; give a whole number of pixels from 0 to tile_size - 1")
    if bands is None:
        return list(range(1, count + 1))
    chosen = []
    for band in bands:
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 1 <= band <= count:
            raise InputError(f"band {band!r} does not exist: {raster.name} has {count} band(s), numbered 1 to {count}")
        chosen.append(int(band))
    if not chosen:
        raise InputError("bands is empty; give 1-based band numbers, or None for all bands")
    return chosen


def build_from_vectors(
    raster: str | Path | RasterSource,
    vectors: str | Path,
    out_dir: str | Path,
    *,
    tile_size: int = 512,
    overlap: int = 0,
    class_field: str | None = None,
    classes: Mapping[str, int] | None = None,
    bands: Sequence[int] | None = None,
    keep_empty: bool = False,
    all_touched: bool = False,
    overwrite: bool = False,
    vector_crs: CRSLike | None = None,
) -> Path:
    """Tile a raster and burn polygons into masks, writing a dataset (see :mod:`samadapt.data.dataset`).

    Tiles are ``tile_size`` pixels square, stepped by ``tile_size - overlap``; tiles at the
    right and bottom edges are smaller (cut by the edge, not padded). Stems are
    ``<raster stem>_r<row>_c<col>`` with the tile's top-left pixel offset, zero-padded so
    they sort in raster order. Mask values: 0 background, the feature's class id inside a
    polygon (where polygons overlap, the later feature in the file wins), 255 (ignore)
    where the raster has no data. Tiles whose pixels are all nodata are skipped, and so
    are tiles without any polygon pixel unless ``keep_empty``.

    Args:
        raster: any raster GDAL reads: a file, URL, ``/vsi*`` path, STAC item or resolved source
            (:func:`samadapt.imagery.sources.resolve_source`).
        vectors: polygons (GeoPackage, GeoJSON, shapefile, ...) in any CRS; they are
            reprojected to the raster's CRS and clipped to it.
        out_dir: the dataset folder to create.
        tile_size: tile width and height in pixels.
        overlap: pixels shared by neighbouring tiles, 0 <= overlap < tile_size.
        class_field: field holding each polygon's class; None burns every polygon as 1.
            String values are mapped through ``classes`` or numbered 1..K in sorted order;
            integer values are used as ids (1-254) unless ``classes`` is given.
        classes: value of ``class_field`` -> class id (1-254); several values may share an id.
        bands: 1-based raster bands to copy into the tiles (any number); None for all.
        keep_empty: also write tiles without any polygon pixel (all background).
        all_touched: burn every pixel a polygon touches, not only those whose centre it covers.
        overwrite: replace ``out_dir`` if it holds a dataset samadapt wrote, unchanged since
            (see :mod:`samadapt.data.manifest`); any other folder is refused.
        vector_crs: the vectors' CRS when their file has none or a wrong one (e.g. a GeoJSON
            in metres without a ``crs`` member); by default the file's CRS, and the raster's
            when the file has none or its lon/lat coordinates are impossible.

    Returns:
        ``out_dir``, holding ``images/``, ``masks/``, ``classes.json`` and ``samadapt.json``.

    Raises:
        InputFileError: the raster or vector file is missing or unreadable.
        InputError: bad options, no polygons, polygons that do not overlap the raster,
            an unknown ``class_field`` or unmapped class values, or no tile with labels.
        OutputExistsError: ``out_dir`` holds files samadapt did not write as a dataset, or a
            previous dataset and ``overwrite`` is False.
    """
    vectors, out_dir = Path(vectors), Path(out_dir)
    if not isinstance(raster, RasterSource) and not is_remote_or_virtual(str(raster)):
        if not Path(raster).exists():
            raise InputFileError(f"raster not found: {raster}")
    source = resolve_source(raster)  # a local file, URL, /vsi* path or STAC item, read window by window
    with warnings.catch_warnings(), source_env(source.remote):  # GDAL takes the HTTP settings when it opens the file
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(source.gdal_path)
        except RasterioError as exc:
            raise describe_open_error(source, exc) from None
    with src, output_folder(out_dir, kind=DATASET, overwrite=overwrite) as stage:  # refuses a used out_dir first
        band_list = _check_options(tile_size, overlap, bands, src.count, source)
        raster_crs = src.crs if src.crs else None
        frame = _to_raster_crs(_read_vectors(vectors), raster_crs, vector_crs, vectors)
        values, class_names = _class_values(frame, class_field, classes, vectors)
        hits = np.asarray(frame.intersects(shapely.box(*src.bounds)))
        if not hits.any():
            b = src.bounds
            x0, y0, x1, y1 = frame.total_bounds
            raise InputError(
                f"the polygons of {vectors.name} (bounds {x0:.6g}, {y0:.6g}, {x1:.6g}, {y1:.6g} in the raster's CRS) "
                f"do not overlap {source.name} (bounds {b.left:.6g}, {b.bottom:.6g}, {b.right:.6g}, {b.top:.6g}); "
                "check both files cover the same place and the vectors' CRS is right"
            )
        geoms = frame.geometry.to_numpy()[hits]
        values = values[hits]
        tree = shapely.STRtree(geoms)
        digits = len(str(max(src.height, src.width)))
        written = 0
        for row in tile_offsets(src.height, tile_size, overlap):
            for col in tile_offsets(src.width, tile_size, overlap):
                window = Window(col, row, min(tile_size, src.width - col), min(tile_size, src.height - row))
                stem = f"{source.stem}_r{row:0{digits}d}_c{col:0{digits}d}"
                written += _write_tile(src, window, band_list, stem, stage, tree, geoms, values, all_touched,
                                       keep_empty)
        if written == 0:
            raise InputError(
                f"no tile of {source.name} has a polygon pixel; pass all_touched=True for polygons smaller "
                "than a pixel, or keep_empty=True to write unlabelled tiles"
            )
        write_classes(stage, class_names)
    return out_dir


def _write_tile(
    src: rasterio.io.DatasetReader,
    window: Window,
    band_list: list[int],
    stem: str,
    stage: Path,
    tree: shapely.STRtree,
    geoms: np.ndarray,
    values: np.ndarray,
    all_touched: bool,
    keep_empty: bool,
) -> int:
    """Write one tile's image and mask; 1 if written, 0 if skipped (all nodata, or empty)."""
    check_stem(stem)
    height, width = int(window.height), int(window.width)
    transform = src.transform @ Affine.translation(window.col_off, window.row_off)
    data = src.read(band_list, window=window)
    valid = src.dataset_mask(window=window) > 0
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    if not valid.any():
        return 0
    corners = [transform @ corner for corner in ((0, 0), (width, 0), (width, height), (0, height))]
    hits = np.sort(tree.query(shapely.Polygon(corners)))  # in file order, so later features win
    labels = np.zeros((height, width), dtype=np.uint8)
    if len(hits):
        labels = rasterio.features.rasterize(
            zip(geoms[hits], values[hits].tolist(), strict=False), out_shape=(height, width), transform=transform,
            fill=0, all_touched=all_touched, dtype="uint8",
        )
    if not keep_empty and not (labels[valid] > 0).any():
        return 0
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": height, "width": width, "count": len(band_list), "dtype": data.dtype.name,
        "crs": src.crs, "transform": transform, "nodata": src.nodata, "compress": "deflate",
    }
    if src.crs is None:
        del profile["crs"]
    if height >= _BLOCK and width >= _BLOCK:
        profile.update(tiled=True, blockxsize=_BLOCK, blockysize=_BLOCK)
    first_flags = src.mask_flag_enums[band_list[0] - 1]
    internal_mask = MaskFlags.per_dataset in first_flags and MaskFlags.alpha not in first_flags
    image_path = stage / IMAGES_DIR / f"{stem}.tif"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(image_path, "w", **profile) as dst:
            dst.write(data)
            dst.colorinterp = [src.colorinterp[b - 1] for b in band_list]
            if internal_mask:
                dst.write_mask(valid.astype(np.uint8) * 255)
    write_mask_geotiff(
        stage / MASKS_DIR / f"{stem}.tif", labels, crs=src.crs, transform=transform,
        valid=None if valid.all() else valid,
    )
    return 1

