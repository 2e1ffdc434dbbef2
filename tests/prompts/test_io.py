"""Tests of samadapt.prompts.io: parsing CLI prompts, map -> pixel coordinates, prompt files."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import LineString, MultiPoint, Point, box

from helpers.rasters import UTM
from samadapt.errors import InputError, InputFileError
from samadapt.prompts.io import (
    map_box_to_pixel,
    map_to_pixel,
    parse_box,
    parse_point,
    prompts_from_cli,
    read_prompt_file,
)

# Non-square pixels: 2 m wide, 3 m tall; UTM zone 16N around 36 N, 87 W.
TRANSFORM = Affine(2.0, 0.0, 500_000.0, 0.0, -3.0, 4_000_000.0)
TO_LONLAT = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)


def pixel_to_map(px: np.ndarray) -> np.ndarray:
    return np.array([TRANSFORM @ (float(x), float(y)) for x, y in px])


def pixel_to_lonlat(px: np.ndarray) -> np.ndarray:
    xy = pixel_to_map(px)
    return np.column_stack(TO_LONLAT.transform(xy[:, 0], xy[:, 1]))


def test_parse_point() -> None:
    assert parse_point("10,20") == (10.0, 20.0, 1)
    assert parse_point(" 10.5 , -20 , 0 ") == (10.5, -20.0, 0)
    assert parse_point("-87.1,36.2,1") == (-87.1, 36.2, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", "has 1 values; expected 'x,y' or 'x,y,label'"),
        ("1,2,3,4", "has 4 values"),
        ("a,2", "'a' is not a finite number"),
        ("1,nan", "'nan' is not a finite number"),
        ("1,2,3", "label '3' .* must be 1 \\(foreground\\) or 0 \\(background\\)"),
        ("1,2,yes", "label 'yes'"),
    ],
)
def test_parse_point_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_point(text)


def test_parse_box() -> None:
    assert parse_box("1,2,30.5,40") == (1.0, 2.0, 30.5, 40.0)
    with pytest.raises(InputError, match="has 3 values; expected 'x0,y0,x1,y1'"):
        parse_box("1,2,3")
    with pytest.raises(InputError, match="empty or reversed"):
        parse_box("30,2,1,40")
    with pytest.raises(InputError, match="'inf' is not a finite number"):
        parse_box("1,2,inf,40")


def test_map_to_pixel_inverts_transform() -> None:
    px = np.array([[0.0, 0.0], [12.5, 7.25], [100.0, 3.0]])
    back = map_to_pixel(pixel_to_map(px), transform=TRANSFORM, src_crs=None, raster_crs=UTM)
    assert np.allclose(back, px)
    same = map_to_pixel(pixel_to_map(px), transform=TRANSFORM, src_crs="EPSG:32616", raster_crs=CRS.from_epsg(32616))
    assert np.allclose(same, px)


def test_map_to_pixel_reprojects_from_wgs84() -> None:
    px = np.array([[0.0, 0.0], [12.5, 7.25], [500.0, 800.0]])
    lonlat = pixel_to_lonlat(px)
    back = map_to_pixel(lonlat, transform=TRANSFORM, src_crs="EPSG:4326", raster_crs=CRS.from_epsg(32616))
    assert np.allclose(back, px, atol=1e-6)
    # The same numbers computed with pyproj directly.
    e, n = pyproj.Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(lonlat[:, 0], lonlat[:, 1])
    assert np.allclose(back, np.column_stack([(e - 500_000.0) / 2.0, (4_000_000.0 - n) / 3.0]))


def test_map_to_pixel_errors() -> None:
    with pytest.raises(InputError, match="no transform"):
        map_to_pixel(np.zeros((1, 2)), transform=None, src_crs=None, raster_crs=None)
    with pytest.raises(InputError, match="raster has no CRS"):
        map_to_pixel(np.zeros((1, 2)), transform=TRANSFORM, src_crs="EPSG:4326", raster_crs=None)
    with pytest.raises(InputError, match=r"\(P, 2\)"):
        map_to_pixel(np.zeros((2, 3)), transform=TRANSFORM, src_crs=None, raster_crs=UTM)
    with pytest.raises(InputError, match="not a coordinate reference system"):
        map_to_pixel(np.zeros((1, 2)), transform=TRANSFORM, src_crs="EPSG:nope", raster_crs=UTM)


def test_map_box_to_pixel() -> None:
    # North-up raster: the map box's top (y1) is the pixel box's y0.
    x0, y1 = TRANSFORM @ (5, 6)
    x1, y0 = TRANSFORM @ (15, 12)
    got = map_box_to_pixel(np.array([x0, y0, x1, y1]), transform=TRANSFORM, src_crs=None, raster_crs=UTM)
    assert np.allclose(got, [5, 6, 15, 12])
    lon_lat_box = np.array([-87.02, 35.97, -87.0, 35.99])
    got = map_box_to_pixel(lon_lat_box[None], transform=TRANSFORM, src_crs="EPSG:4326", raster_crs=UTM)
    assert got.shape == (1, 4)
    corners = np.array([[-87.02, 35.97], [-87.02, 35.99], [-87.0, 35.97], [-87.0, 35.99]])
    corner_px = map_to_pixel(corners, transform=TRANSFORM, src_crs="EPSG:4326", raster_crs=UTM)
    assert (got[0, :2] <= corner_px.min(axis=0) + 1e-9).all() and (got[0, 2:] >= corner_px.max(axis=0) - 1e-9).all()
    assert np.allclose(got[0], [*corner_px.min(axis=0), *corner_px.max(axis=0)], atol=2.0)  # edges barely curve
    with pytest.raises(InputError, match="x0 < x1 and y0 < y1"):
        map_box_to_pixel(np.array([2.0, 0, 1, 1]), transform=TRANSFORM, src_crs=None, raster_crs=UTM)


def test_prompts_from_cli_grouping() -> None:
    kw = {"crs": None, "transform": None, "raster_crs": None}
    (one,) = prompts_from_cli(["5,6", "7,8,0"], ["1,2,30,40"], **kw)
    assert np.array_equal(one.box, [1, 2, 30, 40])
    assert np.array_equal(one.points, [[5, 6], [7, 8]]) and one.labels.tolist() == [1, 0]
    first, second, pts = prompts_from_cli(["5,6"], ["1,2,3,4", "10,10,20,20"], **kw)
    assert np.array_equal(first.box, [1, 2, 3, 4]) and len(first.points) == 0
    assert np.array_equal(second.box, [10, 10, 20, 20])
    assert pts.box is None and np.array_equal(pts.points, [[5, 6]])
    (only_points,) = prompts_from_cli(["1,1", "2,2", "3,3,0"], [], **kw)
    assert len(only_points.points) == 3 and only_points.box is None
    assert [p.box.tolist() for p in prompts_from_cli([], ["1,2,3,4", "5,6,7,8"], **kw)] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert prompts_from_cli([], [], **kw) == []


def test_prompts_from_cli_map_coordinates() -> None:
    # SAM point prompts name the pixel a map point falls in: its centre (c + 0.5, r + 0.5) becomes (c, r)
    px = np.array([[12.5, 7.25], [40.0, 30.0]])
    lonlat = pixel_to_lonlat(px)
    (prompt,) = prompts_from_cli(
        [f"{lonlat[0, 0]},{lonlat[0, 1]}"], [], crs="EPSG:4326", transform=TRANSFORM, raster_crs=UTM
    )
    assert np.allclose(prompt.points, px[:1] - 0.5, atol=1e-6)
    (utm_box,) = prompts_from_cli([], ["500010,3999964,500030,3999982"], crs=UTM, transform=TRANSFORM, raster_crs=UTM)
    assert np.allclose(utm_box.box, [5, 6, 15, 12])
    with pytest.raises(InputError, match="--crs needs a georeferenced raster"):
        prompts_from_cli(["1,2"], [], crs="EPSG:4326", transform=None, raster_crs=None)


def test_geojson_polygons_and_points(tmp_path: Path) -> None:
    # A pixel box (5, 6, 15, 12) as a UTM polygon, written in lon/lat; two points, one background.
    corners = pixel_to_lonlat(np.array([[5, 6], [15, 6], [15, 12], [5, 12]]))
    pts = pixel_to_lonlat(np.array([[20.5, 3.5], [8.0, 9.0]]))
    frame = gpd.GeoDataFrame(
        {"label": [None, 1, 0]},
        geometry=[box(0, 0, 1, 1).__class__(corners), Point(pts[0]), Point(pts[1])],
        crs="EPSG:4326",
    )
    path = tmp_path / "prompts.geojson"
    frame.to_file(path)
    boxes_prompt, fg, bg = read_prompt_file(path, transform=TRANSFORM, raster_crs=CRS.from_epsg(32616))
    assert np.allclose(boxes_prompt.box, [5, 6, 15, 12], atol=1e-6) and len(boxes_prompt.points) == 0
    assert np.allclose(fg.points, [[20.0, 3.0]], atol=1e-6) and fg.labels.tolist() == [1]
    assert bg.labels.tolist() == [0]


def test_gpkg_object_property_groups_box_and_points(tmp_path: Path) -> None:
    x0, y1 = TRANSFORM @ (5, 6)
    x1, y0 = TRANSFORM @ (15, 12)
    frame = gpd.GeoDataFrame(
        {"object": [7, 7, None], "label": [1, 0, 1]},
        geometry=[box(x0, y0, x1, y1), MultiPoint([TRANSFORM @ (6, 7), TRANSFORM @ (8, 9)]), Point(TRANSFORM @ (1, 1))],
        crs=UTM,
    )
    path = tmp_path / "prompts.gpkg"
    frame.to_file(path, layer="prompts")
    grouped, alone = read_prompt_file(path, transform=TRANSFORM, raster_crs=UTM)
    assert np.allclose(grouped.box, [5, 6, 15, 12])
    assert np.allclose(grouped.points, [[5.5, 6.5], [7.5, 8.5]]) and grouped.labels.tolist() == [0, 0]
    assert np.allclose(alone.points, [[0.5, 0.5]]) and alone.box is None


def test_vector_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "lines.geojson"
    gpd.GeoDataFrame(geometry=[LineString([(0, 0), (1, 1)])], crs="EPSG:4326").to_file(path)
    with pytest.raises(InputError, match="is a LineString; prompt features must be Point or Polygon"):
        read_prompt_file(path, transform=TRANSFORM, raster_crs=UTM)
    with pytest.raises(InputError, match="needs a georeferenced raster"):
        read_prompt_file(path, transform=None, raster_crs=None)
    with pytest.raises(InputFileError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.gpkg", transform=None, raster_crs=None)
    with pytest.raises(InputError, match=r"allowed are \.csv, \.geojson, \.json, \.gpkg, \.shp"):
        read_prompt_file(tmp_path / "prompts.txt", transform=None, raster_crs=None)


def test_csv_boxes_and_points(tmp_path: Path) -> None:
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("x0,y0,x1,y1\n1,2,10,20\n\n5, 5, 6, 6\n")

    got = read_prompt_file(boxes, transform=None, raster_crs=None)
    assert [p.box.tolist() for p in got] == [[1, 2, 10, 20], [5, 5, 6, 6]]
    points = tmp_path / "points.csv"
    points.write_text("X,Y,Label\n3,4,1\n5.5,6,0\n")
    got = read_prompt_file(points, transform=None, raster_crs=None)
    assert [p.points.tolist() for p in got] == [[[3, 4]], [[5.5, 6]]] and got[1].labels.tolist() == [0]
    grouped = tmp_path / "grouped.csv"
    grouped.write_text("x,y,label,object\n3,4,1,a\n5,6,0,a\n7,8,1,\n")
    a, single = read_prompt_file(grouped, transform=None, raster_crs=None)
    assert a.points.tolist() == [[3, 4], [5, 6]] and a.labels.tolist() == [1, 0]
    assert single.points.tolist() == [[7, 8]]


def test_csv_map_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("x0,y0,x1,y1\n500010,3999964,500030,3999982\n")
    (prompt,) = read_prompt_file(path, transform=TRANSFORM, raster_crs=UTM, crs=UTM)
    assert np.allclose(prompt.box, [5, 6, 15, 12])
    lonlat = pixel_to_lonlat(np.array([[12.5, 7.25]]))
    pts = tmp_path / "points.csv"
    pts.write_text(f"x,y\n{float(lonlat[0, 0])!r},{float(lonlat[0, 1])!r}\n")
    (prompt,) = read_prompt_file(pts, transform=TRANSFORM, raster_crs=UTM, crs="EPSG:4326")
    assert np.allclose(prompt.points, [[12.0, 6.75]], atol=1e-6)
    with pytest.raises(InputError, match="needs a georeferenced raster"):
        read_prompt_file(pts, transform=None, raster_crs=None, crs="EPSG:4326")


def test_csv_not_text(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes(b"x,y\n\xff\xfe1,2\n")
    with pytest.raises(InputFileError, match="is not UTF-8 CSV text"):
        read_prompt_file(path, transform=None, raster_crs=None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("x,y\n", "has a header but no prompts"),
        ("x,y,z\n1,2,3\n", "has columns x,y,z; accepted columns are 'x0,y0,x1,y1' or 'x,y'"),
        ("x0,y0,x1\n1,2,3\n", "accepted columns are"),
        ("x,x,y\n1,2,3\n", "accepted columns are"),
        ("x,y\n1\n", "line 2 of .* has 1 values but the header has 2"),
        ("x,y\n1,abc\n", "'abc' is not a finite number"),
        ("x,y,label\n1,2,5\n", "point label '5' in line 2"),
        ("x0,y0,x1,y1\n5,5,1,1\n", "line 2 of .*: box '5,5,1,1' is empty or reversed"),
        ("x,y\n1,2\n\n3\n", "line 4 of"),  # blank lines still count
    ],
)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_prompt_file(path, transform=None, raster_crs=None)
