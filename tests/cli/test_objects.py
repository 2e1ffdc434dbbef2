"""``samadapt objects``: geodesic measures on Mars and the Moon, planetocentric centroids, size-frequency tables."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely

from helpers.cli import run_cli
from samadapt.catalogue.build import CountingArea, write_catalogue
from samadapt.catalogue.sfd import bin_edges, cumulative_table
from samadapt.errors import InputError, OutputExistsError

MARS_EQC = "+proj=eqc +a=3396190 +b=3376200 +lat_ts=0 +lon_0=0 +units=m +no_defs"  # Mars ellipsoid, ocentric axes
MARS_A, MARS_B = 3396190.0, 3376200.0


def _circle(crs: str, lon: float, lat: float, radius_m: float, n: int = 128) -> tuple[shapely.Polygon, float, float]:
    """A polygon of ``n`` vertices on a geodesic circle in ``crs``, and the geodesic area (m²) and
    perimeter (m) of that circle sampled densely (3600 points), computed independently with pyproj.Geod."""
    crs_ = pyproj.CRS(crs)
    e = crs_.ellipsoid
    geod = pyproj.Geod(a=e.semi_major_metre, b=e.semi_minor_metre)
    to_map = pyproj.Transformer.from_crs(pyproj.CRS.from_dict({"proj": "longlat", "a": e.semi_major_metre,
                                                               "b": e.semi_minor_metre}), crs_, always_xy=True)

    def ring(k: int) -> tuple[np.ndarray, np.ndarray]:
        az = np.linspace(0.0, 360.0, k + 1)[:-1]
        lons, lats, _ = geod.fwd(np.full(k, lon), np.full(k, lat), az, np.full(k, radius_m))
        return np.asarray(lons), np.asarray(lats)

    lons, lats = ring(3600)
    area, perimeter = geod.polygon_area_perimeter(lons, lats)
    x, y = to_map.transform(*ring(n))
    return shapely.Polygon(zip(x, y, strict=True)), abs(area), perimeter


def _write(path: Path, geoms: list[shapely.Geometry], crs: str | None, **columns: list) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a file without a CRS, on purpose
        gpd.GeoDataFrame(columns, geometry=geoms, crs=crs).to_file(path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path, encoding="utf-8")))


# a PROJ string on the ellipsoid, the IAU sphere, the planetocentric ellipsoid, and the planetographic one whose
# x axis points west (its own lon / lat are west-positive and planetographic: the catalogue converts them)
@pytest.mark.parametrize("crs", [MARS_EQC, "IAU_2015:49910", "IAU_2015:49912", "IAU_2015:49911"])
def test_area_of_a_5_km_circle_on_mars_matches_the_geodesic_area(crs: str, tmp_path: Path) -> None:
    poly, area, perimeter = _circle(crs, 40.0, 60.0, 5000.0)
    # GDAL's GeoPackage CRS record loses a westward x axis (it reads back as Easting); GeoJSON keeps the IAU code
    name = "c.geojson" if crs == "IAU_2015:49911" else "c.gpkg"
    src = _write(tmp_path / name, [poly], crs, **{"class": [1], "score": [0.75]})
    cat = write_catalogue(src, tmp_path / "cat", area=CountingArea(km2=1000.0))
    row = _rows(tmp_path / "cat" / "objects.csv")[0]
    assert float(row["area_km2"]) == pytest.approx(area / 1e6, rel=0.01)
    assert float(row["perimeter_km"]) == pytest.approx(perimeter / 1e3, rel=0.01)
    assert float(row["diameter_km"]) == pytest.approx(10.0, rel=0.01)
    assert float(row["score"]) == 0.75 and row["class"] == "1" and row["id"] == "1"
    b_over_a = pyproj.CRS(crs).ellipsoid.semi_minor_metre / pyproj.CRS(crs).ellipsoid.semi_major_metre
    ocentric = math.degrees(math.atan(b_over_a**2 * math.tan(math.radians(60.0))))
    assert float(row["lon"]) == pytest.approx(40.0, abs=1e-6)
    assert float(row["lat"]) == pytest.approx(ocentric, abs=0.01)  # planetocentric: 59.71 on the ellipsoid
    meta = json.loads((tmp_path / "cat" / "catalogue.json").read_text())
    assert "planetocentric" in meta["latitude"] and meta["body"]["semi_major_m"] == MARS_A
    assert cat.objects == 1 and cat.area_source == "given (--area-km2)"


def test_moon_crater_and_planar_area_differ_from_geodesic_far_from_the_standard_parallel(tmp_path: Path) -> None:
    moon = "IAU_2015:30110"  # Moon sphere, equirectangular: planar areas grow with 1 / cos(lat)
    poly, area, _ = _circle(moon, -20.0, 70.0, 3000.0)
    src = _write(tmp_path / "m.gpkg", [poly], moon)
    write_catalogue(src, tmp_path / "cat", area=CountingArea(km2=100.0))
    row = _rows(tmp_path / "cat" / "objects.csv")[0]
    assert float(row["area_km2"]) == pytest.approx(area / 1e6, rel=0.01)
    assert poly.area / 1e6 > 2.5 * float(row["area_km2"])  # the projection's own area is far off
    assert float(row["lat"]) == pytest.approx(70.0, abs=0.01) and float(row["lon"]) == pytest.approx(-20.0, abs=1e-6)


def test_long_straight_edges_are_densified_to_follow_the_projection(tmp_path: Path) -> None:
    # a 20 x 20 degree square in the Mars equirectangular CRS: its edges are parallels and meridians
    deg = math.pi * MARS_A / 180
    square = shapely.box(10 * deg, 30 * deg, 30 * deg, 50 * deg)
    src = _write(tmp_path / "s.gpkg", [square], MARS_EQC)
    write_catalogue(src, tmp_path / "cat", area=CountingArea(km2=1e7))
    geod = pyproj.Geod(a=MARS_A, b=MARS_B)
    lons = np.r_[np.linspace(10, 30, 400), np.full(400, 30.0), np.linspace(30, 10, 400), np.full(400, 10.0)]
    lats = np.r_[np.full(400, 30.0), np.linspace(30, 50, 400), np.full(400, 50.0), np.linspace(50, 30, 400)]
    expected = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
    assert float(_rows(tmp_path / "cat" / "objects.csv")[0]["area_km2"]) == pytest.approx(expected, rel=0.002)


def test_cumulative_counts_of_known_diameters() -> None:
    diameters = [1.0, 1.2, 1.5, 2.0, 3.0, 4.5, 8.0]
    assert bin_edges(diameters).tolist() == pytest.approx([2 ** (k / 2) for k in range(0, 8)])
    rows = cumulative_table(diameters, area=10.0)
    assert [r["cumulative_count"] for r in rows] == [7, 5, 4, 3, 2, 1, 1]
    assert [r["count_in_bin"] for r in rows] == [2, 1, 1, 1, 1, 0, 1]
    assert rows[0]["diameter"] == 1.0 and rows[1]["diameter"] == pytest.approx(math.sqrt(2))
    assert rows[2]["cumulative_density"] == pytest.approx(0.4) and rows[2]["density_error"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        cumulative_table(diameters, area=0.0)


def test_sfd_table_and_plot_with_an_area_file(tmp_path: Path) -> None:
    radii = [500.0, 800.0, 1200.0, 2500.0]
    geoms = [_circle(MARS_EQC, 10.0 + i, 0.0, r)[0] for i, r in enumerate(radii)]
    src = _write(tmp_path / "craters.gpkg", geoms, MARS_EQC, instance_id=[4, 3, 2, 1],
                 mean_probability=[.9, .8, .7, .6])
    deg = math.pi * MARS_A / 180
    footprint = _write(tmp_path / "footprint.gpkg", [shapely.box(9 * deg, -1 * deg, 14 * deg, 1 * deg)], MARS_EQC)
    cat = write_catalogue(src, tmp_path / "cat", area=CountingArea(polygons=footprint))
    rows = _rows(tmp_path / "cat" / "objects.csv")
    assert [r["id"] for r in rows] == ["4", "3", "2", "1"] and rows[0]["mean_probability"] == "0.9"
    sfd = _rows(tmp_path / "cat" / "sfd.csv")
    assert [int(r["cumulative_count"]) for r in sfd][0] == 4 and int(sfd[-1]["cumulative_count"]) == 1
    # 5 x 2 degrees at the equator of Mars, on its ellipsoid (a degree of latitude is shorter than one of longitude)
    lons = np.r_[np.linspace(9, 14, 200), np.full(200, 14.0), np.linspace(14, 9, 200), np.full(200, 9.0)]
    lats = np.r_[np.full(200, -1.0), np.linspace(-1, 1, 200), np.full(200, 1.0), np.linspace(1, -1, 200)]
    expected = abs(pyproj.Geod(a=MARS_A, b=MARS_B).polygon_area_perimeter(lons, lats)[0]) / 1e6
    assert cat.area == pytest.approx(expected, rel=1e-3)
    assert float(sfd[0]["cumulative_density"]) == pytest.approx(4 / cat.area)
    assert (tmp_path / "cat" / "sfd.png").stat().st_size > 1000 and not cat.notes


def test_default_counting_area_is_the_convex_hull_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    geoms = [_circle("IAU_2015:49910", lon, 0.0, 1000.0)[0] for lon in (0.0, 0.5)]
    src = _write(tmp_path / "p.gpkg", geoms, "IAU_2015:49910")
    code, text = run_cli(["objects", str(src), "--out", str(tmp_path / "cat")], monkeypatch, capsys)
    assert code == 0, text
    assert "convex hull" in text and "underestimates" in text and "2 objects" in text
    meta = json.loads((tmp_path / "cat" / "catalogue.json").read_text())
    assert meta["counting_area"]["source"] == "convex hull of the objects" and meta["notes"]
    code, text = run_cli(["objects", str(src), "--out", str(tmp_path / "cat")], monkeypatch, capsys)
    assert code == 2 and "--overwrite" in text
    code, text = run_cli(["objects", str(src), "--out", str(tmp_path / "cat"), "--overwrite", "--area-km2", "50"],
                         monkeypatch, capsys)
    assert code == 0 and json.loads((tmp_path / "cat" / "catalogue.json").read_text())["counting_area"]["km2"] == 50


def test_polygons_without_a_crs_are_measured_in_their_own_units(tmp_path: Path) -> None:
    src = _write(tmp_path / "px.gpkg", [shapely.box(0, 0, 10, 10), shapely.box(20, 0, 24, 4)], None)
    cat = write_catalogue(src, tmp_path / "cat")
    rows = _rows(tmp_path / "cat" / "objects.csv")
    assert float(rows[0]["area_px2"]) == 100 and float(rows[0]["perimeter_px"]) == 40 and "lon" not in rows[0]
    assert cat.unit == "px" and any("no CRS" in n for n in cat.notes)
    with pytest.raises(InputError, match="--area-km2 needs polygons with a CRS"):
        write_catalogue(src, tmp_path / "cat2", area=CountingArea(km2=3.0))
    assert not (tmp_path / "cat2").exists()


def test_bad_inputs_leave_nothing(tmp_path: Path) -> None:
    points = tmp_path / "pts.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs=MARS_EQC).to_file(points)
    with pytest.raises(InputError, match="polygons"):
        write_catalogue(points, tmp_path / "cat")
    moon_area = _write(tmp_path / "moon.gpkg", [shapely.box(0, 0, 1000, 1000)], "IAU_2015:30110")
    mars = _write(tmp_path / "mars.gpkg", [shapely.box(0, 0, 100, 100)], MARS_EQC)
    with pytest.raises(InputError, match="another body"):
        write_catalogue(mars, tmp_path / "cat", area=CountingArea(polygons=moon_area))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        write_catalogue(mars, tmp_path / "mine", overwrite=True)
    assert not (tmp_path / "cat").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
