"""Coordinates between the canvas, the raster layer and the service's lng/lat of the layer's body.

The service speaks degrees of longitude and latitude of the raster's body (EPSG:4326 on Earth,
the body's geographic CRS on Mars or the Moon) and says which CRS that is in ``GET /sources``.
QGIS transforms between the layer's CRS and that CRS; between bodies it cannot (a Mars layer
has no WGS 84 coordinates), so every transform here stays on the layer's body and is checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
)


class CrsError(RuntimeError):
    """A CRS the service named cannot be used, or the layer cannot be placed in it."""


def body_crs(text: str) -> QgsCoordinateReferenceSystem:
    """The lng/lat CRS the service named (an authority code such as IAU_2015:49900, or WKT)."""
    crs = QgsCoordinateReferenceSystem(text)
    if not crs.isValid():
        crs = QgsCoordinateReferenceSystem.fromWkt(text)
    if not crs.isValid():
        raise CrsError(f"QGIS does not know the service's geographic CRS {text[:80]!r}")
    return crs


def transform(src: QgsCoordinateReferenceSystem, dst: QgsCoordinateReferenceSystem,
              probe: QgsPointXY) -> QgsCoordinateTransform:
    """A checked transform from ``src`` to ``dst``; ``probe`` (a point in ``src``) must go there and back.

    Raises:
        CrsError: QGIS has no operation between the two CRSs (e.g. two bodies), or it fails at ``probe``.
    """
    tr = QgsCoordinateTransform(src, dst, QgsProject.instance().transformContext())
    if not tr.isValid():
        raise CrsError(f"QGIS cannot transform {src.authid() or src.description()} to "
                       f"{dst.authid() or dst.description()}")
    try:
        there = tr.transform(probe)
        back = tr.transform(there, QgsCoordinateTransform.ReverseTransform)
    except Exception as exc:  # QgsCsException
        raise CrsError(f"QGIS cannot transform {src.description()} to {dst.description()}: {exc}") from None
    values = (there.x(), there.y(), back.x(), back.y())
    if not all(math.isfinite(v) for v in values):
        raise CrsError(f"QGIS cannot transform {src.description()} to {dst.description()}")
    scale = max(abs(probe.x()), abs(probe.y()), 1.0)
    if abs(back.x() - probe.x()) > 1e-6 * scale or abs(back.y() - probe.y()) > 1e-6 * scale:
        raise CrsError(f"QGIS has no exact transform between {src.description()} and {dst.description()} "
                       "(they are on different bodies or datums)")
    if src != dst and there.x() == probe.x() and there.y() == probe.y() and src.isGeographic() != dst.isGeographic():
        raise CrsError(f"QGIS left the coordinates unchanged between {src.description()} and {dst.description()} "
                       "(no operation between their bodies)")
    return tr


def rect_points(rect: QgsRectangle) -> list[QgsPointXY]:
    """The four corners of ``rect``."""
    return [QgsPointXY(rect.xMinimum(), rect.yMinimum()), QgsPointXY(rect.xMaximum(), rect.yMinimum()),
            QgsPointXY(rect.xMaximum(), rect.yMaximum()), QgsPointXY(rect.xMinimum(), rect.yMaximum())]


def lnglat_bbox(points: Sequence[QgsPointXY], to_body: QgsCoordinateTransform) -> dict[str, Any]:
    """The service's ``{"ne", "sw"}`` box around ``points`` (layer CRS) in lng/lat of the body."""
    lnglat = [to_body.transform(p) for p in points]
    west, east = min(p.x() for p in lnglat), max(p.x() for p in lnglat)
    south, north = min(p.y() for p in lnglat), max(p.y() for p in lnglat)
    return {"ne": {"lat": north, "lng": east}, "sw": {"lat": south, "lng": west}}


def lnglat(point: QgsPointXY, to_body: QgsCoordinateTransform) -> dict[str, float]:
    """``{"lat", "lng"}`` of a layer-CRS point."""
    p = to_body.transform(point)
    return {"lat": p.y(), "lng": p.x()}


def _ring(coords: Sequence[Sequence[float]]) -> list[QgsPointXY]:
    return [QgsPointXY(float(c[0]), float(c[1])) for c in coords]


def geojson_geometry(geometry: dict[str, Any]) -> QgsGeometry:
    """A QGIS geometry of a GeoJSON Polygon or MultiPolygon (coordinates unchanged).

    Raises:
        ValueError: any other geometry type.
    """
    kind, coords = geometry.get("type"), geometry.get("coordinates") or []
    if kind == "Polygon":
        return QgsGeometry.fromPolygonXY([_ring(r) for r in coords])
    if kind == "MultiPolygon":
        return QgsGeometry.fromMultiPolygonXY([[_ring(r) for r in poly] for poly in coords])
    raise ValueError(f"the service returned a {kind} geometry; polygons were expected")


def to_layer(geometry: dict[str, Any], from_body: QgsCoordinateTransform) -> QgsGeometry:
    """A GeoJSON polygon in lng/lat of the body, as a QGIS geometry in the layer's CRS."""
    geom = geojson_geometry(geometry)
    geom.transform(from_body)
    return geom


def pixel_size(layer: Any) -> tuple[float, float]:
    """The raster layer's pixel size in its CRS units (x, y)."""
    return abs(layer.rasterUnitsPerPixelX()) or 1.0, abs(layer.rasterUnitsPerPixelY()) or 1.0
