"""Prompts from the command line and from files, in pixel or map coordinates.

Everything here returns :class:`~samadapt.prompts.types.ObjectPrompt` objects in pixel coordinates
of the raster as read: (0, 0) is the top-left corner of the top-left pixel, x to the right and
y down, continuous (a pixel's centre is at (col + 0.5, row + 0.5)). Boxes are XYXY.

Map coordinates are (x, y) in the order of traditional GIS software whatever the CRS says:
(easting, northing) for projected CRSs and (longitude, latitude) for geographic ones, so
``EPSG:4326`` input is lon, lat.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyproj
from affine import Affine, TransformNotInvertibleError

from samadapt.errors import InputError, InputFileError
from samadapt.imagery.crs import CRSLike, to_pyproj_crs
from samadapt.prompts.records import PromptRecords, check_column, class_ids
from samadapt.prompts.types import ObjectPrompt

if TYPE_CHECKING:
    pass

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp")
PROMPT_FILE_SUFFIXES = (".csv", *VECTOR_SUFFIXES)
CSV_LAYOUTS = ("x0,y0,x1,y1", "x,y", "x,y,label", "x,y,object", "x,y,label,object")
# Points along each edge of a box when it is reprojected, so curved edges are not cut short.
_BOX_EDGE_POINTS = 21


def _number(text: str, what: str, form: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(f"{what} {text.strip()!r} is not a finite number; expected {form}")
    return value


def _label(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise InputError(f"point label {text.strip()!r} in {where} must be 1 (foreground) or 0 (background)")
    return int(value)


def parse_point(text: str) -> tuple[float, float, int]:
    """Parse a point prompt written as ``"x,y"`` or ``"x,y,label"``.

    Args:
        text: Comma-separated numbers; the label is 1 (foreground, the default) or 0 (background).

    Returns:
        (x, y, label); x and y are in whatever coordinates the caller uses (pixels or map).

    Raises:
        InputError: Not two or three comma-separated values, a coordinate that is not a finite
            number, or a label other than 0 or 1.
    """
    form = "'x,y' or 'x,y,label' with label 1 (foreground) or 0 (background)"
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise InputError(f"point {text!r} has {len(parts)} values; expected {form}")
    x = _number(parts[0], f"x of point {text!r}:", form)
    y = _number(parts[1], f"y of point {text!r}:", form)
    label = _label(parts[2], f"point {text!r}") if len(parts) == 3 else 1
    return x, y, label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse a box prompt written as ``"x0,y0,x1,y1"`` (XYXY, x0 < x1 and y0 < y1).

    Args:
        text: Four comma-separated numbers.

    Returns:
        (x0, y0, x1, y1) in whatever coordinates the caller uses (pixels or map).

    Raises:
        InputError: Not four finite numbers, or x0 >= x1 or y0 >= y1.
    """
    form = "'x0,y0,x1,y1' with x0 < x1 and y0 < y1"
    parts = text.split(",")
    if len(parts) != 4:
        raise InputError(f"box {text!r} has {len(parts)} values; expected {form}")
    x0, y0, x1, y1 = (_number(p, f"value of box {text!r}:", form) for p in parts)
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"box {text!r} is empty or reversed; expected {form}")
    return x0, y0, x1, y1


def _reproject(
    xs: np.ndarray, ys: np.ndarray, src_crs: CRSLike | None, raster_crs: CRSLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """Move (x, y) map coordinates from ``src_crs`` into ``raster_crs`` (no-op when src is None)."""
    src = to_pyproj_crs(src_crs)
    if src is None:
        return xs, ys
    dst = to_pyproj_crs(raster_crs)
    if dst is None:
        raise InputError(f"coordinates are in {src.to_string()} but the raster has no CRS to reproject them to")
    if src == dst:
        return xs, ys
    transformer = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    out_x, out_y = transformer.transform(xs, ys)
    out_x, out_y = np.asarray(out_x, dtype=np.float64), np.asarray(out_y, dtype=np.float64)
    if not (np.isfinite(out_x).all() and np.isfinite(out_y).all()):
        raise InputError(f"some coordinates cannot be reprojected from {src.to_string()} to the raster's CRS")
    return out_x, out_y


def _inverse(transform: Affine | None) -> Affine:
    if transform is None:
        raise InputError("map coordinates need a georeferenced raster, and this one has no transform")
    try:
        return ~transform
    except TransformNotInvertibleError as err:
        raise InputError(f"the raster transform {tuple(transform)[:6]} cannot be inverted") from err


def map_to_pixel(
    xy: np.ndarray, *, transform: Affine | None, src_crs: CRSLike | None, raster_crs: CRSLike | None
) -> np.ndarray:
    """Convert map coordinates to continuous pixel coordinates of a raster.

    Args:
        xy: (P, 2) map coordinates (x, y) in ``src_crs``, x = easting or longitude.
        transform: The raster's affine transform (pixel col/row -> map x/y in ``raster_crs``).
        src_crs: The CRS of ``xy``; None means it already is the raster's CRS.
        raster_crs: The raster's CRS.

    Returns:
        (P, 2) float64 pixel coordinates (x = column, y = row), (0, 0) the top-left corner of the
        top-left pixel; not clipped to the image.

    Raises:
        InputError: ``xy`` is not (P, 2), the raster has no transform, ``src_crs`` is given but
            the raster has no CRS, or a point cannot be reprojected.
    """
    arr = np.asarray(xy, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"map coordinates must be a (P, 2) array of x, y; got shape {arr.shape}")
    inverse = _inverse(transform)
    xs, ys = _reproject(arr[:, 0], arr[:, 1], src_crs, raster_crs)
    cols = inverse.a * xs + inverse.b * ys + inverse.c
    rows = inverse.d * xs + inverse.e * ys + inverse.f
    return np.column_stack([cols, rows])


def map_to_prompt_point(
    xy: np.ndarray, *, transform: Affine | None, src_crs: CRSLike | None, raster_crs: CRSLike | None
) -> np.ndarray:
    """Convert map points to SAM point prompts: (x, y) = (column, row) of the pixel they fall in.

    SAM's prompt encoder adds half a pixel itself, so the point for the pixel in row r and
    column c is (c, r); a map point at that pixel's centre therefore maps to exactly (c, r).
    """
    return map_to_pixel(xy, transform=transform, src_crs=src_crs, raster_crs=raster_crs) - 0.5


def map_box_to_pixel(
    boxes: np.ndarray, *, transform: Affine | None, src_crs: CRSLike | None, raster_crs: CRSLike | None
) -> np.ndarray:
    """Convert XYXY map boxes to the XYXY pixel boxes that enclose them.

    Each box's outline is reprojected (corners, plus points along the edges when the CRS
    differs, since edges curve) and the min / max of the result in pixel coordinates is kept.

    Args:
        boxes: (B, 4) or (4,) boxes (x0, y0, x1, y1) in ``src_crs`` with x0 < x1 and y0 < y1.
        transform: The raster's affine transform.
        src_crs: The CRS of ``boxes``; None means it already is the raster's CRS.
        raster_crs: The raster's CRS.

    Returns:
        Boxes of the same shape as ``boxes``, XYXY in continuous pixel coordinates.

    Raises:
        InputError: Bad shape, reversed box, or any error of :func:`map_to_pixel`.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    single = arr.shape == (4,)
    arr = arr.reshape(1, 4) if single else arr
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"boxes must be a (B, 4) array of x0, y0, x1, y1; got shape {np.shape(boxes)}")
    if not ((arr[:, 0] < arr[:, 2]).all() and (arr[:, 1] < arr[:, 3]).all()):
        raise InputError("every box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1")
    n = 2 if src_crs is None else _BOX_EDGE_POINTS
    t = np.linspace(0.0, 1.0, n)
    x0, y0, x1, y1 = (arr[:, i : i + 1] for i in range(4))
    # Outline of each box: bottom, top, left and right edges, (B, 4n) points.
    xs = np.concatenate([x0 + (x1 - x0) * t, x0 + (x1 - x0) * t, x0 + 0 * t, x1 + 0 * t], axis=1)
    ys = np.concatenate([y0 + 0 * t, y1 + 0 * t, y0 + (y1 - y0) * t, y0 + (y1 - y0) * t], axis=1)
    px = map_to_pixel(
        np.column_stack([xs.ravel(), ys.ravel()]), transform=transform, src_crs=src_crs, raster_crs=raster_crs
    ).reshape(len(arr), -1, 2)
    out = np.concatenate([px.min(axis=1), px.max(axis=1)], axis=1)
    return out[0] if single else out


def _to_pixels(
    points: np.ndarray, boxes: np.ndarray, *, crs: CRSLike | None, transform: Affine | None,
    raster_crs: CRSLike | None, flag: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert (P, 2) points and (B, 4) boxes from ``crs`` map coordinates to pixels."""
    if crs is None:
        return points, boxes
    if transform is None or raster_crs is None:
        raise InputError(f"{flag} needs a georeferenced raster (with a transform and a CRS); this one has none")
    if len(points):
        points = map_to_prompt_point(points, transform=transform, src_crs=crs, raster_crs=raster_crs)
    if len(boxes):
        boxes = map_box_to_pixel(boxes, transform=transform, src_crs=crs, raster_crs=raster_crs)
    return points, boxes


def prompts_from_cli(
    points: Sequence[str], boxes: Sequence[str], *, crs: str | None, transform: Affine | None,
    raster_crs: CRSLike | None,
) -> list[ObjectPrompt]:
    """Build object prompts from ``--point`` and ``--box`` options.

    Every box is one object. All points belong to one object; when exactly one box is given
    they join that box's object (SAM's box + points prompt), otherwise they form an object of
    their own, placed after the box objects.

    Args:
        points: Texts "x,y" or "x,y,label" (see :func:`parse_point`).
        boxes: Texts "x0,y0,x1,y1" (see :func:`parse_box`).
        crs: None when the coordinates are pixels; otherwise the CRS of the map coordinates
            (e.g. "EPSG:4326" for lon, lat), reprojected to the raster's CRS.
        transform: The raster's affine transform, or None for a plain image.
        raster_crs: The raster's CRS, or None.

    Returns:
        Object prompts in pixel coordinates; empty when no point and no box was given.

    Raises:
        InputError: A point or box cannot be parsed, or ``crs`` is given for a raster that is
            not georeferenced.
    """
    parsed_points = [parse_point(t) for t in points]
    parsed_boxes = [parse_box(t) for t in boxes]
    xy = np.array([p[:2] for p in parsed_points], dtype=np.float64).reshape(-1, 2)
    labels = np.array([p[2] for p in parsed_points], dtype=np.int64)
    box_arr = np.array(parsed_boxes, dtype=np.float64).reshape(-1, 4)
    xy, box_arr = _to_pixels(xy, box_arr, crs=crs, transform=transform, raster_crs=raster_crs, flag="--crs")
    if len(box_arr) == 1 and len(xy):
        return [ObjectPrompt(points=xy, labels=labels, box=box_arr[0])]
    prompts = [ObjectPrompt(box=b) for b in box_arr]
    if len(xy):
        prompts.append(ObjectPrompt(points=xy, labels=labels))
    return prompts


def _group(
    keys: Sequence[Hashable], points: np.ndarray, labels: np.ndarray, boxes: np.ndarray, source: Path
) -> tuple[list[ObjectPrompt], list[int]]:
    """Gather items (a point or a box each, NaN where absent) that share a key into one object;
    also return each object's first item."""
    order: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        order.setdefault(key, []).append(i)
    prompts = []
    for key, idx in order.items():
        is_point = ~np.isnan(points[idx, 0])
        box_rows = [i for i, p in zip(idx, is_point, strict=True) if not p]
        if len(box_rows) > 1:
            raise InputError(f"object {key!r} in {source} has {len(box_rows)} boxes; an object takes at most one box")
        point_rows = [i for i, p in zip(idx, is_point, strict=True) if p]
        prompts.append(
            ObjectPrompt(
                points=points[point_rows],
                labels=labels[point_rows],
                box=boxes[box_rows[0]] if box_rows else None,
            )
        )
    return prompts, [idx[0] for idx in order.values()]


def _read_csv(
    path: Path, *, transform: Affine | None, raster_crs: CRSLike | None, crs: str | None, class_column: str | None
) -> PromptRecords:
    allowed = " or ".join(repr(c) for c in CSV_LAYOUTS)
    rows, line_numbers = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append(row)
                    line_numbers.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputFileError(f"prompt file {path} is not UTF-8 CSV text: {err}") from err
    if not rows:
        raise InputError(f"prompt file {path} is empty; expected a header row {allowed} and one row per prompt")
    header = [c.strip().lower() for c in rows[0]]
    if class_column is not None:
        class_name = check_column(class_column.lower(), [c.strip() for c in rows[0]], path).lower()
    layout = [c for c in header if class_column is None or c != class_name]
    if len(set(header)) != len(header) or set(layout) not in [set(c.split(",")) for c in CSV_LAYOUTS]:
        raise InputError(f"prompt file {path} has columns {','.join(header)}; accepted columns are {allowed}")
    if len(rows) == 1:
        raise InputError(f"prompt file {path} has a header but no prompts")
    col = {name: i for i, name in enumerate(header)}
    is_box = "x0" in col
    n = len(rows) - 1
    points = np.full((n, 2), np.nan)
    labels = np.ones(n, dtype=np.int64)
    boxes = np.full((n, 4), np.nan)
    keys: list[Hashable] = []
    for i, row in enumerate(rows[1:]):
        where = f"line {line_numbers[i + 1]} of {path}"
        if len(row) != len(header):
            raise InputError(f"{where} has {len(row)} values but the header has {len(header)}")
        if is_box:
            try:
                boxes[i] = parse_box(",".join(row[col[c]].strip() for c in ("x0", "y0", "x1", "y1")))
            except InputError as err:
                raise InputError(f"{where}: {err}") from err
        else:
            points[i] = [_number(row[col[c]], f"{c} on {where}:", "a number") for c in ("x", "y")]
            if "label" in col:
                labels[i] = _label(row[col["label"]], where)
        object_id = row[col["object"]].strip() if "object" in col else ""
        keys.append(("object", object_id) if object_id else ("row", i))
    px_points, px_boxes = _to_pixels(
        points[~np.isnan(points[:, 0])], boxes[~np.isnan(boxes[:, 0])],
        crs=crs, transform=transform, raster_crs=raster_crs, flag=f"crs {crs!r} for {path}",
    )  # fmt: skip
    points[~np.isnan(points[:, 0])] = px_points
    boxes[~np.isnan(boxes[:, 0])] = px_boxes
    prompts, firsts = _group(keys, points, labels, boxes, path)
    classes: list[object] | None = None if class_column is None else [rows[1 + i][col[class_name]]
                                                                       for i in firsts]
    return _records(prompts, list(firsts), classes, class_column, path)


def _records(prompts: list[ObjectPrompt], ids: list[int | str], classes: list[object] | None,
             class_column: str | None, path: Path) -> PromptRecords:
    if classes is None or class_column is None:
        return PromptRecords(prompts, ids)
    class_list, names = class_ids(classes, class_column, path)
    return PromptRecords(prompts, ids, class_list, names)


def _read_vector(
    path: Path, *, transform: Affine | None, raster_crs: CRSLike | None, crs: str | None, class_column: str | None
) -> PromptRecords:
    import geopandas as gpd  # imported here: geopandas is slow to import and only files need it

    try:
        frame = gpd.read_file(path, engine="pyogrio", fid_as_index=True)
    except Exception as err:  # pyogrio raises several unrelated types for unreadable files
        raise InputFileError(f"prompt file {path} cannot be read as a vector file: {err}") from err
    if len(frame) == 0:
        raise InputError(f"prompt file {path} has no features; it needs Point or Polygon features")
    attributes = [c for c in frame.columns if c != frame.geometry.name]
    class_name = None if class_column is None else check_column(class_column, attributes, path)
    # GeoJSON string ids are kept as an "id" column (integer ids are the FID)
    fids = frame["id"].tolist() if path.suffix.lower() != ".gpkg" and "id" in attributes else frame.index.tolist()
    given = to_pyproj_crs(crs)
    if given is not None and frame.crs is not None and to_pyproj_crs(frame.crs) != given:
        raise InputError(f"prompt file {path} declares CRS {frame.crs.to_string()}, which differs from crs {crs!r}")
    src = frame.crs if frame.crs is not None else given
    if src is not None:
        if transform is None or raster_crs is None:
            raise InputError(f"prompt file {path} is in map coordinates and needs a georeferenced raster")
        frame = frame.set_crs(src, allow_override=True).to_crs(to_pyproj_crs(raster_crs))
    keys: list[Hashable] = []
    xy: list[tuple[float, float]] = []
    labels: list[int] = []
    box_list: list[tuple[float, float, float, float]] = []
    item_feature: list[int] = []  # the feature of each item (a point of a MultiPoint, a polygon)
    label_col = frame["label"].tolist() if "label" in frame.columns else [None] * len(frame)
    object_col = frame["object"].tolist() if "object" in frame.columns else [None] * len(frame)
    for i, (geom, raw, object_id) in enumerate(zip(frame.geometry, label_col, object_col, strict=True)):
        where = f"feature {i} of {path}"
        if geom is None or geom.is_empty:
            raise InputError(f"{where} has no geometry; every feature must be a Point or a Polygon")
        # NaN != NaN: a missing property in one feature of a file that has the column.
        key: Hashable = ("object", object_id) if object_id is not None and object_id == object_id else ("row", i)
        if geom.geom_type in ("Point", "MultiPoint"):
            label = 1 if raw is None or raw != raw else _label(str(raw), where)
            for part in getattr(geom, "geoms", [geom]):
                item_feature.append(i)
                keys.append(key)
                xy.append((part.x, part.y))
                labels.append(label)
                box_list.append((np.nan,) * 4)
        elif geom.geom_type in ("Polygon", "MultiPolygon"):
            item_feature.append(i)
            keys.append(key)
            xy.append((np.nan, np.nan))
            labels.append(1)
            box_list.append(tuple(geom.bounds))
        else:
            raise InputError(f"{where} is a {geom.geom_type}; prompt features must be Point or Polygon")
    points = np.array(xy, dtype=np.float64)
    boxes = np.array(box_list, dtype=np.float64)
    if src is not None:
        is_point, is_box = ~np.isnan(points[:, 0]), ~np.isnan(boxes[:, 0])
        if is_point.any():
            points[is_point] = map_to_prompt_point(points[is_point], transform=transform, src_crs=None,
                                                   raster_crs=None)
        if is_box.any():
            boxes[is_box] = map_box_to_pixel(boxes[is_box], transform=transform, src_crs=None, raster_crs=None)
    prompts, firsts = _group(keys, points, np.array(labels, dtype=np.int64), boxes, path)
    return _records(prompts, [_fid(fids[item_feature[i]]) for i in firsts],
                    None if class_name is None else [frame[class_name].iloc[item_feature[i]] for i in firsts],
                    class_column, path)


def _fid(value: object) -> int | str:
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return value if isinstance(value, int) else str(value)


def read_prompt_file(
    path: str | Path, *, transform: Affine | None, raster_crs: CRSLike | None, crs: str | None = None
) -> list[ObjectPrompt]:
    """Read object prompts from a CSV, GeoJSON, GeoPackage or Shapefile.

    Vector files: each Polygon / MultiPolygon feature becomes one box prompt (its bounds in the
    raster's CRS), each Point / MultiPoint feature one object of foreground points (a ``label``
    property of 0 makes them background points). Coordinates are in the file's CRS and are
    reprojected to the raster's; a file without a CRS is in ``crs`` when given, else in pixels.
    GeoJSON files always have a CRS (WGS84 when none is written), so they need a georeferenced
    raster.

    CSV files have a header row, ``x0,y0,x1,y1`` (one box per row) or ``x,y`` with optional
    ``label`` (one point per row). Coordinates are pixels unless ``crs`` is given.

    An optional ``object`` property (vector files) or column (CSV points) groups the features
    or rows that share its value into one object (points plus at most one box); those without
    one are one object each.

    Args:
        path: The prompt file; its suffix chooses the reader (.csv, .geojson, .json, .gpkg, .shp).
        transform: The raster's affine transform, or None for a plain image.
        raster_crs: The raster's CRS, or None.
        crs: The CRS of the coordinates of a CSV file, or of a vector file that has none.

    Returns:
        Object prompts in pixel coordinates, in file order.

    Raises:
        InputFileError: The file does not exist or cannot be read.
        InputError: Unknown suffix, empty file, unknown CSV columns, bad values, unsupported
            geometry types, or map coordinates for a raster that is not georeferenced.
    """
    return read_prompt_records(path, transform=transform, raster_crs=raster_crs, crs=crs).prompts


def read_prompt_records(
    path: str | Path, *, transform: Affine | None, raster_crs: CRSLike | None, crs: str | None = None,
    class_column: str | None = None,
) -> PromptRecords:
    """:func:`read_prompt_file` with each object's prompt id and, given ``class_column``, its class
    (see :mod:`samadapt.prompts.records`); a CSV may then have that column besides its layout's.

    Raises:
        InputError: As :func:`read_prompt_file`, or ``class_column`` is not a column of the file
            (the sentence lists those it has), or a bad class value.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise InputError(f"prompt file {path} has suffix {suffix!r}; allowed are {', '.join(PROMPT_FILE_SUFFIXES)}")
    if not path.is_file():
        raise InputFileError(f"prompt file {path} does not exist")
    reader = _read_csv if suffix == ".csv" else _read_vector
    return reader(path, transform=transform, raster_crs=raster_crs, crs=crs, class_column=class_column)
