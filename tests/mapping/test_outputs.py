"""Tests of samadapt.mapping.outputs: vectorising masks and writing PNG, GeoTIFF, GeoPackage, GeoJSON."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from helpers.rasters import UTM
from samadapt.errors import InputError, OutputExistsError
from samadapt.mapping import outputs
from samadapt.mapping.outputs import (
    vectorize,
    write_mask_geotiff,
    write_mask_png,
    write_polygons,
    write_segmentation,
)
from samadapt.predict.result import MaskCrop, SegmentationResult

H, W = 20, 30
MARS = "+proj=eqc +R=3396190 +units=m +no_defs"
# Non-square pixels: 2 m wide, 3 m tall.
UTM_TRANSFORM = Affine(2.0, 0.0, 500_000.0, 0.0, -3.0, 4_000_000.0)
MARS_TRANSFORM = Affine(0.25, 0.0, 100_000.0, 0.0, -0.5, -200_000.0)


def make_masks() -> np.ndarray:
    """(4, H, W): a 5x5 square, a 9x9 ring with a 3x3 hole, two separate blobs, an empty mask."""
    masks = np.zeros((4, H, W), dtype=bool)
    masks[0, 2:7, 3:8] = True
    masks[1, 8:17, 10:19] = True
    masks[1, 11:14, 13:16] = False
    masks[2, 1:4, 20:23] = True
    masks[2, 15:19, 24:28] = True
    return masks


SCORES = np.array([0.9, 0.8, 0.7, 0.1])


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("crs", "transform"), [(UTM, UTM_TRANSFORM), (MARS, MARS_TRANSFORM)])
def test_vectorize_georeferenced(crs: str, transform: Affine) -> None:
    masks = make_masks()
    gdf = vectorize(masks, SCORES, transform=transform, crs=crs)
    pixel_area = abs(transform.a * transform.e)
    assert gdf.crs == pyproj.CRS(crs)
    assert gdf["object"].tolist() == [0, 1, 2]  # the empty mask has no row
    assert np.allclose(gdf["score"], SCORES[:3])
    counts = masks[:3].sum(axis=(1, 2))
    assert np.allclose(gdf["area"], counts * pixel_area)
    assert np.allclose(gdf.geometry.area, counts * pixel_area)
    square, ring, blobs = gdf.geometry
    # Square covers cols 3..7, rows 2..6: its map bounds follow from the transform.
    x0, y1 = transform @ (3, 2)
    x1, y0 = transform @ (8, 7)
    assert np.allclose(square.bounds, (x0, y0, x1, y1))
    assert ring.geom_type == "Polygon" and len(ring.interiors) == 1
    assert np.isclose(ring.area, 72 * pixel_area)
    assert np.isclose(gpd.GeoSeries([ring.interiors[0]]).convex_hull.area[0], 9 * pixel_area)
    assert blobs.geom_type == "MultiPolygon" and len(blobs.geoms) == 2
    # Burning the polygons back into the grid gives the masks exactly.
    for geom, mask in zip(gdf.geometry, masks, strict=False):
        burnt = rasterio.features.rasterize([geom], out_shape=(H, W), transform=transform).astype(bool)
        assert np.array_equal(burnt, mask)


def test_vectorize_rotated_transform() -> None:
    transform = Affine.translation(500_000.0, 4_000_000.0) @ Affine.rotation(30) @ Affine.scale(2.0, -3.0)
    gdf = vectorize(make_masks(), SCORES, transform=transform, crs=UTM)
    corners = {tuple(np.round(transform @ c, 6)) for c in [(3, 2), (8, 2), (8, 7), (3, 7)]}
    assert {tuple(np.round(c, 6)) for c in gdf.geometry[0].exterior.coords} == corners
    assert np.isclose(gdf["area"][0], 25 * 6.0)


def test_vectorize_pixel_coordinates() -> None:
    gdf = vectorize(make_masks(), SCORES, transform=None, crs=None)
    assert gdf.crs is None
    assert gdf.geometry[0].bounds == (3.0, 2.0, 8.0, 7.0)  # x right, y down, edges on integers
    assert gdf["area"].tolist() == [25.0, 72.0, 25.0]


def test_vectorize_min_area_and_simplify() -> None:
    gdf = vectorize(make_masks(), SCORES, transform=None, crs=None, min_area_pixels=10)
    assert gdf["area"].tolist() == [25.0, 72.0, 16.0]  # the 9-pixel blob is dropped
    gdf = vectorize(make_masks(), SCORES, transform=None, crs=None, min_area_pixels=30)
    assert gdf["object"].tolist() == [1]
    yy, xx = np.mgrid[:H, :W]
    disk = ((yy - 10) ** 2 + (xx - 15) ** 2 < 64)[None]
    exact = vectorize(disk, np.ones(1), transform=None, crs=None).geometry[0]
    simple = vectorize(disk, np.ones(1), transform=None, crs=None, simplify=1.0).geometry[0]
    assert len(simple.exterior.coords) < len(exact.exterior.coords)
    assert abs(simple.area - exact.area) < 0.1 * exact.area


def test_vectorize_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="bool"):
        vectorize(make_masks().astype(np.uint8), SCORES, transform=None, crs=None)
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        vectorize(make_masks()[0], SCORES, transform=None, crs=None)
    with pytest.raises(InputError, match=r"scores must have shape \(4,\)"):
        vectorize(make_masks(), SCORES[:2], transform=None, crs=None)


def test_vectorize_empty_result_has_columns() -> None:
    gdf = vectorize(np.zeros((2, 4, 4), dtype=bool), np.ones(2), transform=UTM_TRANSFORM, crs=UTM)
    assert len(gdf) == 0 and list(gdf.columns) == ["object", "score", "area", "geometry"]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".json"])
@pytest.mark.parametrize(("crs", "transform"), [(UTM, UTM_TRANSFORM), (MARS, MARS_TRANSFORM)])
def test_polygon_round_trip_keeps_crs(tmp_path: Path, suffix: str, crs: str, transform: Affine) -> None:
    gdf = vectorize(make_masks(), SCORES, transform=transform, crs=crs)
    path = write_polygons(tmp_path / f"masks{suffix}", gdf)
    back = gpd.read_file(path)
    assert back.crs == pyproj.CRS(crs)
    assert back["object"].tolist() == [0, 1, 2]
    assert np.allclose(back["area"], gdf["area"])
    assert all(a.equals(b) for a, b in zip(back.geometry, gdf.geometry, strict=True))
    if suffix == ".gpkg":
        assert [name for name, _ in pyogrio.list_layers(path)] == ["masks"]
    assert listing(tmp_path) == [f"masks{suffix}"]


def test_polygons_from_rasterio_crs(tmp_path: Path) -> None:
    gdf = vectorize(make_masks(), SCORES, transform=UTM_TRANSFORM, crs=CRS.from_epsg(32616))
    assert gpd.read_file(write_polygons(tmp_path / "m.gpkg", gdf)).crs == pyproj.CRS(UTM)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_to_wgs84_gives_lon_lat(tmp_path: Path, suffix: str) -> None:
    gdf = vectorize(make_masks(), SCORES, transform=UTM_TRANSFORM, crs=UTM)
    back = gpd.read_file(write_polygons(tmp_path / f"m{suffix}", gdf, to_wgs84=True))
    assert back.crs.to_epsg() == 4326
    utm_xy = shapely.get_coordinates(gdf.geometry[0])
    lon, lat = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(utm_xy[:, 0], utm_xy[:, 1])
    assert np.allclose(shapely.get_coordinates(back.geometry[0]), np.column_stack([lon, lat]))
    minx, miny, maxx, maxy = back.total_bounds
    assert -88 < minx < maxx < -86 and 36 < miny < maxy < 36.2  # UTM 16N, 4000 km north


def test_to_wgs84_refuses_mars_and_no_crs(tmp_path: Path) -> None:
    mars = vectorize(make_masks(), SCORES, transform=MARS_TRANSFORM, crs=MARS)
    with pytest.raises(InputError, match="only applies to Earth rasters"):
        write_polygons(tmp_path / "m.gpkg", mars, to_wgs84=True)
    plain = vectorize(make_masks(), SCORES, transform=None, crs=None)
    with pytest.raises(InputError, match="no CRS"):
        write_polygons(tmp_path / "m.geojson", plain, to_wgs84=True)
    with pytest.raises(InputError, match=r"allowed are \.gpkg, \.geojson, \.json"):
        write_polygons(tmp_path / "m.shp", plain)
    assert listing(tmp_path) == []


def test_geotiff_round_trip(tmp_path: Path) -> None:
    labels = SegmentationResult(make_masks(), SCORES.astype(np.float32)).label_image().astype(np.uint8)
    valid = np.ones((H, W), dtype=bool)
    valid[:, :4] = False
    path = write_mask_geotiff(tmp_path / "m.tif", labels, crs=UTM, transform=UTM_TRANSFORM, valid=valid)
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_epsg(32616)
        assert src.transform == UTM_TRANSFORM
        assert src.count == 1 and src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.profile["compress"] == "deflate"
        data = src.read(1)
        read_valid = src.read_masks(1) > 0
    assert np.array_equal(read_valid, valid)
    assert np.array_equal(data[valid], labels[valid])
    assert (data[~valid] == 255).all()


def test_geotiff_mars_tiled_and_uint16(tmp_path: Path) -> None:
    labels = np.zeros((300, 260), dtype=np.uint8)
    labels[10:20, 10:20] = 255  # 255 is a label here, so nodata needs uint16
    path = write_mask_geotiff(tmp_path / "m.tiff", labels, crs=MARS, transform=MARS_TRANSFORM, valid=None)
    with rasterio.open(path) as src:
        assert pyproj.CRS(src.crs.to_wkt()) == pyproj.CRS(MARS)
        assert src.dtypes[0] == "uint16" and src.nodata == 65535
        assert src.profile["tiled"] and src.block_shapes == [(256, 256)]
        assert np.array_equal(src.read(1), labels)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_geotiff_plain_image_and_bad_input(tmp_path: Path) -> None:
    labels = np.eye(5, dtype=np.uint8)
    with rasterio.open(write_mask_geotiff(tmp_path / "p.tif", labels, crs=None, transform=None)) as src:
        assert src.crs is None and np.array_equal(src.read(1), labels)
    with pytest.raises(InputError, match="without a transform"):
        write_mask_geotiff(tmp_path / "q.tif", labels, crs=UTM, transform=None)
    with pytest.raises(InputError, match="valid must be a bool array"):
        write_mask_geotiff(tmp_path / "q.tif", labels, crs=None, transform=None, valid=np.ones((4, 4), bool))
    with pytest.raises(InputError, match=">= 0"):
        write_mask_geotiff(tmp_path / "q.tif", -labels.astype(np.int16), crs=None, transform=None)
    assert listing(tmp_path) == ["p.tif"]


def test_png_binary_and_labels(tmp_path: Path) -> None:
    mask = make_masks()[1]
    binary = np.array(Image.open(write_mask_png(tmp_path / "b.png", mask)))
    assert binary.dtype == np.uint8 and set(np.unique(binary)) == {0, 255}
    assert np.array_equal(binary == 255, mask)
    small = np.array(Image.open(write_mask_png(tmp_path / "s.png", np.arange(12, dtype=np.uint16).reshape(3, 4))))
    assert small.dtype == np.uint8 and small.max() == 11
    big_labels = np.array([[0, 300], [65535, 7]], dtype=np.int64)
    big = np.array(Image.open(write_mask_png(tmp_path / "l.png", big_labels)))
    assert np.array_equal(big.astype(np.int64), big_labels)
    with pytest.raises(InputError, match="does not fit"):
        write_mask_png(tmp_path / "x.png", np.array([[70000]]))
    assert listing(tmp_path) == ["b.png", "l.png", "s.png"]


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_overwrite_refusal_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite to replace it"):
        write_mask_png(path, np.ones((3, 3), bool))
    gdf = vectorize(make_masks(), SCORES, transform=None, crs=None)
    gpkg = tmp_path / "m.gpkg"
    gpkg.write_bytes(b"old gpkg")
    with pytest.raises(OutputExistsError):
        write_polygons(gpkg, gdf)
    assert path.read_bytes() == b"old" and gpkg.read_bytes() == b"old gpkg"
    write_mask_png(path, np.ones((3, 3), bool), overwrite=True)
    assert (np.array(Image.open(path)) == 255).all()
    write_polygons(gpkg, gdf, overwrite=True)
    assert len(gpd.read_file(gpkg)) == 3
    assert listing(tmp_path) == ["m.gpkg", "m.png"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(b"old")

    def broken_save(self: Image.Image, fp: str | Path, *args: object, **kwargs: object) -> None:
        Path(fp).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_mask_png(path, np.ones((3, 3), bool), overwrite=True)
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["m.png"]


@pytest.mark.parametrize("suffix", [".png", ".tif", ".gpkg", ".geojson"])
def test_write_segmentation_dispatch(tmp_path: Path, suffix: str) -> None:
    result = SegmentationResult(make_masks(), SCORES.astype(np.float32))
    out = tmp_path / "new" / "folder" / f"seg{suffix}"
    path = write_segmentation(out, result, crs=UTM, transform=UTM_TRANSFORM, valid=None)
    assert path == out and listing(out.parent) == [out.name]
    if suffix == ".png":
        assert np.array_equal(np.array(Image.open(out)), result.label_image())
    elif suffix == ".tif":
        with rasterio.open(out) as src:
            assert src.crs == CRS.from_epsg(32616) and src.dtypes[0] == "uint8"
            assert np.array_equal(src.read(1), result.label_image())
    else:
        back = gpd.read_file(out)
        assert back.crs == pyproj.CRS(UTM) and back["object"].tolist() == [0, 1, 2]
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        write_segmentation(out, result, crs=UTM, transform=UTM_TRANSFORM, valid=None)
    write_segmentation(out, result, crs=UTM, transform=UTM_TRANSFORM, valid=None, overwrite=True)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_write_segmentation_options_and_errors(tmp_path: Path) -> None:
    result = SegmentationResult(make_masks(), SCORES.astype(np.float32))
    with pytest.raises(InputError, match=r"allowed are \.png, \.tif, \.tiff, \.gpkg, \.geojson, \.json"):
        write_segmentation(tmp_path / "seg.jpg", result, crs=None, transform=None, valid=None)
    path = write_segmentation(
        tmp_path / "seg.geojson", result, crs=UTM, transform=UTM_TRANSFORM, valid=None,
        to_wgs84=True, min_area_pixels=10,
    )  # fmt: skip
    back = gpd.read_file(path)
    assert back.crs.to_epsg() == 4326 and back.geometry[2].geom_type == "Polygon"  # one blob left
    with rasterio.open(write_segmentation(tmp_path / "p.tif", result, crs=None, transform=None, valid=None)) as src:
        assert src.crs is None
    assert listing(tmp_path) == ["p.tif", "seg.geojson"]
    assert outputs.GPKG_LAYER == "masks"


def _cropped(masks: np.ndarray, scores: np.ndarray) -> SegmentationResult:
    """The masks as a segmentation keeps them: each cropped to its object, nothing full-size."""
    crops = [MaskCrop.tight(m, copy=True) for m in masks]
    return SegmentationResult.from_crops(crops, masks.shape[1:], scores.astype(np.float32))


def test_a_result_of_crops_reads_and_writes_as_its_full_masks(tmp_path: Path) -> None:
    masks = make_masks()
    result = _cropped(masks, SCORES)
    assert [c.box for c in result.crops] == [(3, 2, 8, 7), (10, 8, 19, 17), (20, 1, 28, 19), (0, 0, 0, 0)]
    assert result.mask_bytes == 25 + 81 + 8 * 18  # the crops only
    assert result.pixel_counts().tolist() == masks.reshape(4, -1).sum(axis=1).tolist()
    np.testing.assert_array_equal(result.mask(1), masks[1])
    full = SegmentationResult(masks, SCORES.astype(np.float32))
    np.testing.assert_array_equal(result.label_image(), full.label_image())
    for name in ("seg.tif", "seg.png", "seg.geojson"):
        a = write_segmentation(tmp_path / "crops" / name, result, crs=UTM, transform=UTM_TRANSFORM, valid=None)
        b = write_segmentation(tmp_path / "full" / name, full, crs=UTM, transform=UTM_TRANSFORM, valid=None)
        if name.endswith(".geojson"):  # the layer is named after the temporary file
            assert gpd.read_file(a).to_json() == gpd.read_file(b).to_json()
        else:
            assert a.read_bytes() == b.read_bytes()
    one = _cropped(masks[1:2], SCORES[1:2])  # one object: a 0/255 PNG of the whole image
    png = write_segmentation(tmp_path / "one.png", one, crs=None, transform=None, valid=None)
    np.testing.assert_array_equal(np.array(Image.open(png)), masks[1].astype(np.uint8) * 255)
    assert result.masks.shape == (4, H, W) and result.masks is result.masks  # built once, then kept
    np.testing.assert_array_equal(result.masks, masks)


def test_a_crop_outside_the_image_is_refused() -> None:
    crop = MaskCrop(row=18, col=0, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="a crop spans x 0-3, y 18-21, outside the 30 x 20 image"):
        SegmentationResult.from_crops([crop], (H, W), np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"scores must be \(1,\)"):
        SegmentationResult.from_crops([crop], (30, 30), np.ones(2, np.float32))
