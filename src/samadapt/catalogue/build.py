"""``samadapt objects``: a catalogue of the objects in a polygon file, and their size-frequency table.

The output folder, written all or nothing (a temporary folder renamed into place), holds:

* ``objects.gpkg`` (layer ``objects``) and ``objects.csv``: one row per polygon with ``id`` (the
  polygons' ``instance_id``, else 1..N in file order), ``class`` (and ``phrase``) when the polygons
  have them, the centroid in the polygons' CRS (``x``, ``y``: the planar centroid of the polygon
  in the map projection) and in the body's planetocentric coordinates (``lon``: east-positive,
  [-180, 180); ``lat``: planetocentric), the geodesic ``area_km2`` and ``perimeter_km`` on the
  CRS's ellipsoid, the equivalent ``diameter_km`` = 2 sqrt(area / pi), and whichever of
  ``mean_probability``, ``detector_score`` and ``score`` the polygons carry. See
  :mod:`samadapt.catalogue.geodesy` for how areas are measured.
* ``sfd.csv`` and ``sfd.png``: the cumulative size-frequency distribution N(>=D) per km² in
  sqrt(2) diameter bins (:mod:`samadapt.catalogue.sfd`).
* ``catalogue.json``: the CRS, the body's axes, the conventions above, the counting area and
  where it came from, and notes.

The counting area is ``--area-km2`` when given, else the geodesic area of the polygons of
``--area`` (a file, e.g. the raster's footprint), else (``predict --catalogue``) the mapped
raster's extent, else the **convex hull of the objects**: that hull ends at the outermost objects,
so it underestimates the area searched and overstates densities; the table and the JSON say so.

Polygons without a CRS are measured in their own coordinate units (pixels, for an image without
georeferencing): columns ``area_px2``, ``perimeter_px``, ``diameter_px``, no longitude / latitude,
densities per px²; the JSON and the command say so.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from samadapt._io import atomic_dir, write_json
from samadapt.catalogue.geodesy import Body, area_perimeter, centroid_lonlat, equivalent_diameter
from samadapt.catalogue.sfd import COLUMNS, cumulative_table, plot_cumulative
from samadapt.errors import InputError, InputFileError

if TYPE_CHECKING:
    import geopandas as gpd
    import pyproj

#: Score columns carried over from the polygons, in this order.
SCORE_COLUMNS = ("mean_probability", "detector_score", "score")
GPKG_LAYER = "objects"
HULL_NOTE = ("counting area = convex hull of the objects: it ends at the outermost objects, so it underestimates "
             "the area searched and overstates densities; give --area-km2 or --area for densities to compare")


@dataclass(frozen=True)
class CountingArea:
    """Where the counting area comes from: at most one of these is used, in this order.

    Attributes:
        km2: the area itself (km²).
        polygons: a polygon file whose union is the area (e.g. a raster's footprint).
        footprint: a geometry in the objects' CRS and a description of it (e.g. a raster's extent).
    """

    km2: float | None = None
    polygons: Path | None = None
    footprint: tuple[shapely.Geometry, str] | None = None


@dataclass
class Catalogue:
    """What :func:`write_catalogue` wrote."""

    out_dir: Path
    objects: int
    area: float
    area_source: str
    unit: str
    notes: list[str] = field(default_factory=list)


def read_polygons(path: Path, *, what: str = "polygon file") -> gpd.GeoDataFrame:
    """The polygons of a GeoPackage / GeoJSON / Shapefile (its first layer).

    Raises:
        InputFileError: missing or not a vector file.
        InputError: geometries that are not polygons.
    """
    import geopandas as gpd
    import pyogrio

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{what} not found: {path}")
    try:
        frame = gpd.read_file(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as e:
        raise InputFileError(f"{path} is not a readable polygon file (GeoPackage, GeoJSON, Shapefile): {e}") from None
    frame = frame[~frame.geometry.isna() & ~frame.geometry.is_empty]
    kinds = set(frame.geom_type)
    if kinds - {"Polygon", "MultiPolygon"}:
        raise InputError(f"{path} holds {', '.join(sorted(kinds))} geometries; a catalogue needs polygons")
    return frame.reset_index(drop=True)


def _counting_area(frame: gpd.GeoDataFrame, body: Body | None, area: CountingArea) -> tuple[float, str]:
    """(area in the catalogue's unit squared, where it came from)."""
    if area.km2 is not None:
        if body is None:
            raise InputError("--area-km2 needs polygons with a CRS; without one, give --area with a polygon in the "
                             "same coordinates")
        if not area.km2 > 0:
            raise InputError(f"--area-km2 must be a positive area, got {area.km2}")
        return float(area.km2), "given (--area-km2)"
    if area.polygons is not None:
        extent = read_polygons(area.polygons, what="--area file")
        if not len(extent):
            raise InputError(f"--area {area.polygons} holds no polygon")
        if (extent.crs is None) != (body is None):
            raise InputError(f"--area {area.polygons} and the objects must both have a CRS or both have none")
        if body is not None:
            other = Body.of(extent.crs)
            if abs(other.a - body.a) > 1e-3 * body.a:
                raise InputError(f"--area {area.polygons} is on another body ({other.name}) than the objects "
                                 f"({body.name})")
        return _measure(shapely.union_all(extent.geometry.values), body, extent.crs), f"polygons of {area.polygons}"
    if area.footprint is not None:
        geom, description = area.footprint
        return _measure(geom, body, body.crs if body else None), description
    hull = shapely.union_all(frame.geometry.values).convex_hull if len(frame) else None
    if hull is None or hull.area <= 0:
        return float("nan"), "none (no objects to take a convex hull of)"
    return _measure(hull, body, body.crs if body else None), "convex hull of the objects"


def _measure(geom: shapely.Geometry, body: Body | None, crs: pyproj.CRS | None) -> float:
    """Area of ``geom`` in km² on the body (its own CRS ``crs``), or planar without a body."""
    if body is None:
        return float(geom.area)
    own = Body.of(crs) if crs is not None else body
    return area_perimeter(geom, own, own.to_lonlat())[0] / 1e6


def catalogue_rows(frame: gpd.GeoDataFrame) -> tuple[list[dict[str, Any]], str, Body | None]:
    """One row of measures per polygon (see the module docstring), the length unit and the body."""
    body = Body.of(frame.crs) if frame.crs is not None else None
    unit = "km" if body is not None else "px"
    transformer = body.to_lonlat() if body is not None else None
    ids = frame["instance_id"].astype("int64").tolist() if "instance_id" in frame else range(1, len(frame) + 1)
    rows: list[dict[str, Any]] = []
    for i, (geom, ident) in enumerate(zip(frame.geometry.values, ids, strict=True)):
        c = geom.centroid
        row: dict[str, Any] = {"id": int(ident)}
        for column in ("class", "phrase"):
            if column in frame:
                value = frame[column].iloc[i]
                row[column] = value.item() if hasattr(value, "item") else value
        row.update(x=float(c.x), y=float(c.y))
        if body is not None and transformer is not None:
            lon, lat = centroid_lonlat(c.x, c.y, body, transformer)
            area_m2, perimeter_m = area_perimeter(geom, body, transformer)
            area, perimeter = area_m2 / 1e6, perimeter_m / 1e3
            row.update(lon=lon, lat=lat)
        else:
            area, perimeter = float(geom.area), float(geom.length)
        row.update({f"area_{unit}2": area, f"perimeter_{unit}": perimeter,
                    f"diameter_{unit}": equivalent_diameter(area)})
        for column in SCORE_COLUMNS:
            if column in frame:
                row[column] = float(frame[column].iloc[i])
        rows.append(row)
    return rows, unit, body


def write_catalogue(polygons: Path, out_dir: Path, *, area: CountingArea | None = None,
                    overwrite: bool = False) -> Catalogue:
    """Write the catalogue of a polygon file into ``out_dir`` (see the module docstring).

    Args:
        polygons: the objects (GeoPackage, GeoJSON, Shapefile), e.g. ``predict``'s polygons.
        out_dir: the folder to write; an existing catalogue is replaced only with ``overwrite``.
        area: where the counting area comes from; default the convex hull of the objects.
        overwrite: replace a previous catalogue in ``out_dir``.

    Returns:
        What was written.

    Raises:
        InputFileError: the polygon or area file is missing or unreadable.
        InputError: not polygons, a bad counting area, or a CRS without an ellipsoid.
        OutputExistsError: ``out_dir`` exists (without ``overwrite``) or holds other files.
    """
    import geopandas as gpd

    frame = read_polygons(polygons)
    try:
        rows, unit, body = catalogue_rows(frame)
    except ValueError as e:  # a CRS without an ellipsoid
        raise InputError(f"{polygons}: {e}") from None
    count_area, source = _counting_area(frame, body, area or CountingArea())
    notes = []
    if body is None:
        notes.append(f"{polygons} has no CRS: measures are in its coordinate units (pixels for an image without "
                     "georeferencing), with no longitude / latitude")
    if source == "convex hull of the objects":
        notes.append(HULL_NOTE)
    diameters = [r[f"diameter_{unit}"] for r in rows]
    table = cumulative_table(diameters, count_area) if rows and count_area > 0 else []
    meta = {
        "polygons": str(polygons), "objects": len(rows), "unit": unit,
        "crs": frame.crs.to_wkt() if frame.crs is not None else None,
        "body": None if body is None else {"name": body.name, "semi_major_m": body.a, "semi_minor_m": body.b},
        "centroid": "planar centroid of each polygon in its CRS (x, y), transformed to lon / lat",
        "longitude": None if body is None else "east-positive, degrees in [-180, 180)",
        "latitude": None if body is None else "planetocentric, degrees (tan(lat_c) = (b/a)^2 tan(lat_geodetic))",
        "area": None if body is None else "geodesic on the CRS's ellipsoid (pyproj.Geod), edges densified",
        "counting_area": {f"{unit}2": count_area, "source": source},
        "sfd": "cumulative N(>=D) per unit area in sqrt(2) diameter bins (Crater Analysis Techniques Working "
               "Group, 1979); density_error = sqrt(N) / area",
        "notes": notes,
    }
    columns = list(rows[0]) if rows else ["id", "x", "y"]
    with atomic_dir(out_dir, overwrite=overwrite, kind="object catalogue",
                    owned=lambda p: (p / "catalogue.json").is_file()) as tmp:
        geo = gpd.GeoDataFrame(rows, columns=columns, geometry=list(frame.geometry.values), crs=frame.crs)
        with warnings.catch_warnings():  # polygons without a CRS are said so once, in the notes
            warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
            geo.to_file(tmp / "objects.gpkg", layer=GPKG_LAYER, driver="GPKG")
        _write_csv(tmp / "objects.csv", columns, rows)
        extra = {f"counting_area_{unit}2": count_area, "counting_area_source": source}
        sfd_columns = [c.replace("diameter", f"diameter_{unit}") for c in COLUMNS] + list(extra)
        sfd_rows = [{**{k.replace("diameter", f"diameter_{unit}"): v for k, v in r.items()}, **extra} for r in table]
        _write_csv(tmp / "sfd.csv", sfd_columns, sfd_rows)
        shown = f"{count_area:,.0f}" if count_area >= 100 else f"{count_area:.3g}"
        title = f"{Path(polygons).name}: {len(rows)} objects in {shown} {unit}²\n(counting area: {source})"
        plot_cumulative(table, tmp / "sfd.png", unit=unit, title=title)
        write_json(tmp / "catalogue.json", meta)
    return Catalogue(Path(out_dir), len(rows), count_area, source, unit, notes)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) and np.isfinite(v) else v)
                             for k, v in row.items()})
