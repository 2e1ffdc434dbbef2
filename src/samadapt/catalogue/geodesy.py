"""Measures of polygons on the ellipsoid of their CRS's body (Earth, Mars, the Moon, ...).

* Areas and perimeters are geodesic: each polygon is densified in its own CRS (so long straight
  edges follow the projection), transformed to longitude / geodetic latitude on the CRS's
  ellipsoid and measured with :meth:`pyproj.Geod.geometry_area_perimeter` on that ellipsoid.
* Latitudes are reported **planetocentric** (the angle at the body's centre,
  ``tan(lat_c) = (b / a)^2 tan(lat_g)``), east-positive longitudes in [-180, 180), whatever
  convention the CRS's own geographic CRS uses (planetographic, west-positive IAU CRSs are
  converted). On a sphere the two latitudes coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyproj
import shapely
from shapely.geometry.polygon import orient

#: Vertices added per polygon edge at most: edges are cut into pieces no longer than the polygon's
#: bounding-box side divided by this.
DENSIFY_DIVISIONS = 64


@dataclass(frozen=True)
class Body:
    """A CRS's ellipsoid and the transformations a catalogue needs.

    Attributes:
        crs: the polygons' CRS.
        a: semi-major axis in metres.
        b: semi-minor axis in metres.
        name: the ellipsoid's (or the geodetic CRS's) name.
    """

    crs: pyproj.CRS
    a: float
    b: float
    name: str

    @classmethod
    def of(cls, crs: pyproj.CRS) -> Body:
        """The body of ``crs``.

        Raises:
            ValueError: the CRS has no ellipsoid.
        """
        ellipsoid = crs.ellipsoid
        if ellipsoid is None:
            raise ValueError(f"the CRS {crs.name!r} has no ellipsoid, so areas on its body cannot be computed")
        geodetic = crs.geodetic_crs
        name = geodetic.name if geodetic is not None else ellipsoid.name
        return cls(crs, float(ellipsoid.semi_major_metre), float(ellipsoid.semi_minor_metre), name)

    @property
    def geod(self) -> pyproj.Geod:
        """Geodesics on the ellipsoid."""
        return pyproj.Geod(a=self.a, b=self.b)

    @property
    def lonlat(self) -> pyproj.CRS:
        """Longitude (east) / geodetic latitude on the ellipsoid, in that axis order."""
        pm = self.crs.prime_meridian
        extra = {"pm": pm.longitude} if pm is not None and pm.longitude else {}
        return pyproj.CRS.from_dict({"proj": "longlat", "a": self.a, "b": self.b, "no_defs": True, **extra})

    def to_lonlat(self) -> pyproj.Transformer:
        """Map coordinates -> (east longitude, geodetic latitude)."""
        return pyproj.Transformer.from_crs(self.crs, self.lonlat, always_xy=True)

    def planetocentric(self, lat: np.ndarray) -> np.ndarray:
        """Planetocentric latitudes of geodetic ones (degrees)."""
        lat = np.asarray(lat, dtype=np.float64)
        return np.degrees(np.arctan((self.b / self.a) ** 2 * np.tan(np.radians(lat))))


def densify(geom: shapely.Geometry, divisions: int = DENSIFY_DIVISIONS) -> shapely.Geometry:
    """``geom`` with edges cut to at most 1/``divisions`` of its bounding box's larger side."""
    x0, y0, x1, y1 = geom.bounds
    side = max(x1 - x0, y1 - y0)
    return geom if side <= 0 else shapely.segmentize(geom, side / divisions)


def _unwrap(geom: shapely.Geometry) -> shapely.Geometry:
    """Longitudes made continuous when a polygon crosses the ±180° meridian."""
    x0, _, x1, _ = geom.bounds
    if x1 - x0 <= 180:
        return geom
    return shapely.transform(geom, lambda c: np.column_stack([np.where(c[:, 0] < 0, c[:, 0] + 360, c[:, 0]),
                                                               c[:, 1]]))


def area_perimeter(geom: shapely.Geometry, body: Body, transformer: pyproj.Transformer) -> tuple[float, float]:
    """Geodesic area (m²) and perimeter (m, holes included) of a (Multi)Polygon in ``body.crs``."""
    lonlat = shapely.transform(densify(geom), lambda c: np.column_stack(transformer.transform(c[:, 0], c[:, 1])))
    parts = getattr(lonlat, "geoms", [lonlat])
    area = perimeter = 0.0
    for part in parts:
        a, p = body.geod.geometry_area_perimeter(orient(_unwrap(part), sign=1.0))
        area += abs(a)
        perimeter += p
    return area, perimeter


def centroid_lonlat(x: float, y: float, body: Body, transformer: pyproj.Transformer) -> tuple[float, float]:
    """(east longitude in [-180, 180), planetocentric latitude) of a point in ``body.crs``."""
    lon, lat = transformer.transform(x, y)
    lon = (float(lon) + 180.0) % 360.0 - 180.0
    return lon, float(body.planetocentric(np.array(lat)))


def equivalent_diameter(area: float) -> float:
    """Diameter of the circle of area ``area`` (same length unit)."""
    return 2.0 * math.sqrt(area / math.pi) if area > 0 else 0.0
