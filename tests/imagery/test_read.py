"""Tests of samadapt.imagery.read on tiny images and GeoTIFFs generated in tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from helpers.rasters import GRID, UTM, write_geotiff
from samadapt.errors import InputError, InputFileError
from samadapt.imagery.read import (
    GeoImage,
    from_array,
    pixel_read_errors,
    read_bands,
    read_image,
)
from samadapt.imagery.stretch import parse_bands, to_rgb8

MARS = "+proj=eqc +R=3396190 +units=m +no_defs"
TRANSFORM = GRID  # write_geotiff's default: 0.5 m pixels, north up
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spacenet_geotiff"


def ramp_uint16(height: int = 40, width: int = 50) -> np.ndarray:
    """(1, H, W) uint16 with distinct values 1000, 1010, ... row by row."""
    return (1000 + 10 * np.arange(height * width)).reshape(1, height, width).astype(np.uint16)


# ---- plain images ---------------------------------------------------------------------


def test_rgb_png_round_trip_has_exact_pixels_and_no_georeferencing(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        image = read_image(tmp_path / "photo.png")
    np.testing.assert_array_equal(image.pixels, rgb)
    assert image.valid.all()
    assert image.crs is None and image.transform is None and not image.georeferenced
    assert (image.height, image.width) == (12, 17)
    assert image.bands == (1, 2, 3)
    assert image.source == tmp_path / "photo.png"


def test_single_band_is_repeated_to_grey_rgb(tmp_path: Path) -> None:
    grey = np.arange(6 * 7, dtype=np.uint8).reshape(1, 6, 7)
    image = read_image(write_geotiff(tmp_path / "grey.tif", grey))
    assert image.bands == (1,)
    for channel in range(3):
        np.testing.assert_array_equal(image.pixels[..., channel], grey[0])


def test_grey_alpha_png_uses_alpha_as_validity(tmp_path: Path) -> None:
    la = np.zeros((5, 6, 2), dtype=np.uint8)
    la[..., 0] = 90
    la[..., 1] = 255
    la[2:, :3, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.bands == (1,)
    np.testing.assert_array_equal(image.valid, la[..., 1] > 0)
    assert (image.pixels[2:, :3] == 0).all()
    assert (image.pixels[:2] == 90).all()


def test_two_band_geotiff_takes_band_2_as_alpha_even_unmarked(tmp_path: Path) -> None:
    data = np.full((2, 4, 5), 60, dtype=np.uint8)
    data[1] = 255  # an alpha band: only 0 and 255
    data[1, 0, :] = 0
    path = write_geotiff(tmp_path / "grey_alpha.tif", data, photometric="MINISBLACK")
    with rasterio.open(path) as src:
        assert src.colorinterp[1] != ColorInterp.alpha  # GDAL does not know it is alpha
    image = read_image(path)
    assert image.bands == (1,)
    assert not image.valid[0].any() and image.valid[1:].all()
    assert (image.pixels[0] == 0).all() and (image.pixels[1:] == 60).all()


def test_two_band_sar_geotiff_is_not_taken_for_alpha(tmp_path: Path) -> None:
    """Dual-polarisation SAR (VV, VH in dB, negative floats): band 2 is data, so nothing is blanked."""
    rng = np.random.default_rng(0)
    data = np.stack([rng.normal(-12, 3, (6, 7)), rng.normal(-19, 3, (6, 7))]).astype(np.float32)
    image = read_image(write_geotiff(tmp_path / "s1.tif", data))
    assert image.bands == (1,)
    assert image.valid.all()
    assert len(np.unique(image.pixels[..., 0])) > 10  # band 1 stretched, not blanked
    vh = read_image(tmp_path / "s1.tif", bands=(2,))
    assert vh.valid.all() and not np.array_equal(vh.pixels, image.pixels)


def test_two_band_uint8_data_is_not_taken_for_alpha(tmp_path: Path) -> None:
    data = np.stack([np.full((4, 5), 60), np.arange(20).reshape(4, 5) * 10]).astype(np.uint8)  # band 2: 0..190
    image = read_image(write_geotiff(tmp_path / "two.tif", data, photometric="MINISBLACK"))
    assert image.valid.all() and (image.pixels == 60).all()


def test_two_channel_array_follows_the_same_alpha_rule() -> None:
    la = np.stack([np.full((4, 5), 90), np.where(np.arange(20).reshape(4, 5) < 5, 0, 255)]).astype(np.uint8)
    assert from_array(la, channel_axis="first").valid.sum() == 15  # 0 / 255: alpha
    data = np.stack([np.full((4, 5), -3.0), np.full((4, 5), -9.0)]).astype(np.float32)
    assert from_array(data, channel_axis="first").valid.all()  # float data: not alpha


def test_rgba_alpha_band_marks_invalid_pixels(tmp_path: Path) -> None:
    rgba = np.full((4, 8, 9), 200, dtype=np.uint8)
    rgba[3] = 255
    rgba[3, :, :4] = 0
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    path = write_geotiff(tmp_path / "rgba.tif", rgba, colorinterp=interp)
    image = read_image(path)
    assert image.bands == (1, 2, 3)
    assert not image.valid[:, :4].any() and image.valid[:, 4:].all()
    assert (image.pixels[:, :4] == 0).all() and (image.pixels[:, 4:] == 200).all()


def test_dataset_mask_band_marks_invalid_pixels(tmp_path: Path) -> None:
    path = tmp_path / "masked.tif"
    mask = np.full((6, 7), 255, dtype=np.uint8)
    mask[3:, 4:] = 0
    write_geotiff(path, np.full((3, 6, 7), 80, dtype=np.uint8), mask=mask)
    for bands in (None, (3, 2, 1), (2,)):
        image = read_image(path, bands=bands)
        np.testing.assert_array_equal(image.valid, mask > 0)
        assert (image.pixels[3:, 4:] == 0).all() and (image.pixels[:3] == 80).all()


def test_four_band_without_alpha_shows_first_three(tmp_path: Path) -> None:
    bands = np.stack([np.full((3, 4), v, dtype=np.uint8) for v in (10, 20, 30, 0)])
    # GDAL would make a 4-band uint8 GTiff RGBA by default; MINISBLACK makes it 4 plain bands
    image = read_image(write_geotiff(tmp_path / "four.tif", bands, photometric="MINISBLACK"))
    assert image.valid.all()
    np.testing.assert_array_equal(image.pixels[0, 0], [10, 20, 30])


# ---- band choice ----------------------------------------------------------------------


def test_bands_4_3_2_pick_the_right_bands(tmp_path: Path) -> None:
    bands = np.stack([np.full((5, 6), v, dtype=np.uint8) for v in (11, 22, 33, 44)])
    path = write_geotiff(tmp_path / "ms.tif", bands, photometric="MINISBLACK")
    image = read_image(path, bands=parse_bands("4,3,2"))
    assert image.bands == (4, 3, 2)
    np.testing.assert_array_equal(image.pixels.reshape(-1, 3), np.tile([44, 33, 22], (30, 1)))


def test_band_out_of_range_names_band_and_count(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "ms.tif", np.zeros((4, 3, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"band 5 does not exist: ms\.tif has 4 band\(s\)"):
        read_image(path, bands=(5, 3, 2))
    with pytest.raises(InputError, match="band 0 does not exist"):
        read_image(path, bands=(0,))


@pytest.mark.parametrize("bands", [(1, 2), (1, 2, 3, 4), ()])
def test_band_count_other_than_1_or_3_is_refused_with_a_hint(tmp_path: Path, bands: tuple[int, ...]) -> None:
    path = write_geotiff(tmp_path / "ms.tif", np.zeros((4, 3, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"pass 1 or 3 bands, e\.g\. --bands 4,3,2"):
        read_image(path, bands=bands)


def test_parse_bands() -> None:
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands(" 1 , 1,1 ") == (1, 1, 1)
    with pytest.raises(InputError, match="band list is empty"):
        parse_bands("")
    with pytest.raises(InputError, match="band 0 .* numbered from 1"):
        parse_bands("0")
    with pytest.raises(InputError, match="band 'a' .* not a whole number"):
        parse_bands("a")
    with pytest.raises(InputError, match="band '' .* not a whole number"):
        parse_bands("4,,2")


# ---- stretch, nodata, NaN -------------------------------------------------------------


def test_uint16_stretch_maps_percentiles_to_0_and_255(tmp_path: Path) -> None:
    data = ramp_uint16()
    image = read_image(write_geotiff(tmp_path / "u16.tif", data))
    low, high = np.percentile(data, (2, 98))
    grey = image.pixels[..., 0].astype(int)
    assert (grey[data[0] <= low] == 0).all()
    assert (grey[data[0] >= high] == 255).all()
    middle = (data[0] > low) & (data[0] < high)
    assert 100 < grey[middle].mean() < 155
    assert np.all(np.diff(grey.ravel()) >= 0)  # monotonic ramp stays monotonic


def test_stretch_ignores_nodata_pixels(tmp_path: Path) -> None:
    data = ramp_uint16()
    plain = read_image(write_geotiff(tmp_path / "plain.tif", data, nodata=0))
    spoiled = data.copy()
    spoiled[0, :10, :10] = 0  # nodata region
    with_nodata = read_image(write_geotiff(tmp_path / "spoiled.tif", spoiled, nodata=0))
    # Extreme values would move the percentiles if they were counted.
    extreme = data.copy()
    extreme[0, :10, :10] = 65535
    extreme_masked = read_image(write_geotiff(tmp_path / "extreme.tif", extreme, nodata=65535))
    assert not with_nodata.valid[:10, :10].any() and with_nodata.valid.sum() == data.size - 100
    assert (with_nodata.pixels[:10, :10] == 0).all()
    np.testing.assert_array_equal(with_nodata.pixels, extreme_masked.pixels)
    np.testing.assert_array_equal(with_nodata.valid, extreme_masked.valid)
    assert with_nodata.nodata == 0.0 and extreme_masked.nodata == 65535.0
    # and the stretch over the remaining pixels still spans 0..255
    assert with_nodata.pixels[with_nodata.valid].min() == 0 and with_nodata.pixels.max() == 255
    assert plain.valid.all()


def test_nodata_must_match_all_chosen_bands(tmp_path: Path) -> None:
    data = np.full((3, 4, 4), 50, dtype=np.uint8)
    data[:, 0, 0] = 7  # all bands nodata -> invalid
    data[0, 1, 1] = 7  # only one band nodata -> still data
    image = read_image(write_geotiff(tmp_path / "nd.tif", data, nodata=7))
    assert not image.valid[0, 0] and image.valid[1, 1]
    assert image.valid.sum() == 15


def test_float_with_nan_is_invalid_and_excluded_from_stretch(tmp_path: Path) -> None:
    data = np.linspace(-1.0, 1.0, 30 * 30, dtype=np.float32).reshape(1, 30, 30)
    data[0, 5, :] = np.nan
    image = read_image(write_geotiff(tmp_path / "f32.tif", data))
    assert not image.valid[5].any() and image.valid.sum() == 30 * 29
    assert (image.pixels[5] == 0).all()
    grey = image.pixels[..., 0][image.valid]
    assert grey.min() == 0 and grey.max() == 255


def test_custom_and_no_stretch(tmp_path: Path) -> None:
    data = np.array([[[0, 100, 200, 300, 400]]], dtype=np.int16)
    path = write_geotiff(tmp_path / "i16.tif", data)
    np.testing.assert_array_equal(read_image(path, stretch=None).pixels[0, :, 0], [0, 100, 200, 255, 255])
    np.testing.assert_allclose(read_image(path, stretch=(0, 100)).pixels[0, :, 0], [0, 64, 128, 191, 255], atol=1)
    u8 = write_geotiff(tmp_path / "u8.tif", np.array([[[100, 110, 120]]], dtype=np.uint8))
    np.testing.assert_array_equal(read_image(u8).pixels[0, :, 0], [100, 110, 120])  # auto: untouched
    np.testing.assert_allclose(read_image(u8, stretch=(0, 100)).pixels[0, :, 0], [0, 128, 255], atol=1)
    with pytest.raises(InputError, match="0 <= low < high <= 100"):
        read_image(path, stretch=(98, 2))


def test_to_rgb8_constant_band_and_validation() -> None:
    constant = np.full((1, 3, 3), 1234.5)
    out = to_rgb8(constant, np.ones((3, 3), dtype=bool))
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8 and np.isfinite(out).all()
    assert len(np.unique(out)) == 1
    none_valid = to_rgb8(np.ones((3, 2, 2), dtype=np.uint16), np.zeros((2, 2), dtype=bool))
    assert (none_valid == 0).all()
    with pytest.raises(InputError, match="C = 1 or 3 bands"):
        to_rgb8(np.zeros((2, 3, 3)), np.ones((3, 3), dtype=bool))
    with pytest.raises(InputError, match="valid has shape"):
        to_rgb8(np.zeros((1, 3, 3)), np.ones((2, 3), dtype=bool))


# ---- georeferencing and windows -------------------------------------------------------


@pytest.mark.parametrize("crs", [UTM, MARS])
def test_crs_and_transform_preserved(tmp_path: Path, crs: CRS | str) -> None:
    image = read_image(write_geotiff(tmp_path / "geo.tif", np.zeros((1, 4, 5), dtype=np.uint8), crs=crs))
    assert image.georeferenced
    assert image.crs == CRS.from_user_input(crs)
    assert image.transform == TRANSFORM


def test_window_read_returns_window_pixels_and_transform(tmp_path: Path) -> None:
    data = np.arange(20 * 30, dtype=np.uint8).reshape(1, 20, 30)
    path = write_geotiff(tmp_path / "win.tif", data, crs=MARS)
    image = read_image(path, window=Window(col_off=7, row_off=4, width=10, height=6))
    np.testing.assert_array_equal(image.pixels[..., 0], data[0, 4:10, 7:17])
    assert image.transform == TRANSFORM @ Affine.translation(7, 4)
    assert image.transform @ (0, 0) == (500_000.0 + 7 * 0.5, 3_700_000.0 - 4 * 0.5)
    # a window hanging over the edge is clipped to the raster
    edge = read_image(path, window=Window(25, 15, 10, 10))
    assert (edge.height, edge.width) == (5, 5)
    with pytest.raises(InputError, match="is empty"):
        read_image(path, window=Window(0, 0, 0, 5))
    with pytest.raises(InputError, match="lies outside win.tif"):
        read_image(path, window=Window(100, 100, 5, 5))


# ---- errors ---------------------------------------------------------------------------


def test_missing_file_and_non_image_give_input_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="image file not found: .*nothing.tif"):
        read_image(tmp_path / "nothing.tif")
    (tmp_path / "notes.tif").write_text("this is not a raster")
    with pytest.raises(InputFileError, match=r"notes\.tif is not a readable image or raster"):
        read_image(tmp_path / "notes.tif")


def cut_in_half(path: Path) -> Path:
    """A copy of ``path`` holding only its first half, as an interrupted download or copy leaves it."""
    cut = path.with_name("cut.tif")
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def test_truncated_geotiff_names_the_file_and_the_damage(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 256, (3, 300, 300), dtype=np.uint8)
    cut = cut_in_half(write_geotiff(tmp_path / "whole.tif", data))
    top = read_image(cut, window=Window(0, 0, 300, 20))  # the header and the first rows are whole
    np.testing.assert_array_equal(top.pixels, np.moveaxis(data[:, :20], 0, -1))
    damaged = r"cut\.tif is damaged or truncated: bands 1, 2, 3 could not be read"
    with pytest.raises(InputFileError, match=damaged + r" \(GDAL: band 1: IReadBlock failed"):
        read_image(cut)
    with pytest.raises(InputFileError, match=damaged + r" in the window at column 0, row 200, 300 x 100 pixels"):
        read_image(cut, window=Window(0, 200, 300, 100))
    with pytest.raises(InputFileError, match=r"cut\.tif is damaged or truncated: bands 1, 3 could not be read"):
        read_bands(cut, (1, 3))


def test_pixel_read_errors_turn_any_window_read_into_one_sentence(tmp_path: Path) -> None:
    """What a caller reading windows itself (the raster mapper) gets around its reads."""
    data = np.zeros((1, 300, 300), dtype=np.uint16)
    cut = cut_in_half(write_geotiff(tmp_path / "whole.tif", data))
    window = Window(10, 250, 20, 30)
    with rasterio.open(cut) as ds:
        with pytest.raises(InputFileError) as caught, pixel_read_errors(ds.name, window=window, bands=(1,)):
            ds.read(1, window=window)
        with pixel_read_errors(ds.name, window=Window(0, 0, 5, 5), bands=(1,)):
            assert ds.read(1, window=Window(0, 0, 5, 5)).shape == (5, 5)  # no error, nothing changed
    message = str(caught.value)
    assert message.startswith(f"{cut} is damaged or truncated: band 1 could not be read in the window at column 10, "
                              "row 250, 20 x 30 pixels (GDAL: ")
    assert message.endswith("; copy or download it again") and "\n" not in message
    assert "See previous exception" not in message


# ---- tiny rasters ---------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "count"), [(1, 1, 1), (1, 1, 3), (1, 5, 3), (5, 1, 3), (2, 2, 3),
                                                        (3, 3, 3), (1, 2, 1)])
def test_tiny_geotiffs_read_bands_first(tmp_path: Path, height: int, width: int, count: int) -> None:
    data = np.random.default_rng(5).integers(0, 256, (count, height, width), dtype=np.uint8)
    image = read_image(write_geotiff(tmp_path / "tiny.tif", data))
    assert (image.height, image.width) == (height, width)
    rgb = np.repeat(data, 3 // count, axis=0)  # one band is shown grey
    np.testing.assert_array_equal(image.pixels, np.moveaxis(rgb, 0, -1))
    again = from_array(image.pixels, channel_axis="last")  # how a window read for a model is passed on
    np.testing.assert_array_equal(again.pixels, image.pixels)


# ---- numpy arrays ---------------------------------------------------------------------


def test_from_array_layouts_and_metadata() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    hwc = from_array(rgb, crs=MARS, transform=TRANSFORM)
    chw = from_array(np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(hwc.pixels, rgb)
    np.testing.assert_array_equal(chw.pixels, rgb)
    assert hwc.georeferenced and hwc.crs == CRS.from_string(MARS) and hwc.source is None
    grey = from_array(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert grey.pixels.shape == (3, 4, 3) and grey.bands == (1,)
    masked = from_array(rgb, nodata=rgb[0, 0, 0], bands=(1,))
    assert not masked.valid[0, 0]
    with pytest.raises(InputError, match=r"shape \(3, 3, 3\); pass channel_axis='first' for \(bands, rows, cols\)"):
        from_array(np.zeros((3, 3, 3), dtype=np.uint8))
    assert from_array(np.zeros((3, 3, 3), dtype=np.uint8), channel_axis="last").pixels.shape == (3, 3, 3)


@pytest.mark.parametrize("shape", [(1, 5, 3), (2, 300, 3), (1, 1, 3), (2, 2, 3), (5, 1, 3), (3, 40, 1)])
def test_thin_and_tiny_arrays_are_never_guessed(shape: tuple[int, int, int]) -> None:
    """Both end axes could hold an image's bands: (rows, cols, bands) and (bands, rows, cols) both fit.

    A raster window comes out as (rows, cols, bands); a 1 x 5 RGB strip used to be read
    silently as one band of 5 x 3 pixels.
    """
    pixels = np.random.default_rng(6).integers(0, 256, shape, dtype=np.uint8)
    a, b, c = shape
    readings = rf"{a} band\(s\) of {b} x {c} pixels or {c} band\(s\) of {a} x {b} pixels"
    with pytest.raises(InputError, match=rf"shape \({a}, {b}, {c}\): it reads as {readings}; pass channel_axis="):
        from_array(pixels)
    assert from_array(pixels, channel_axis="last").pixels.shape == (a, b, 3)


def test_clear_layouts_are_still_guessed() -> None:
    rng = np.random.default_rng(7)
    assert from_array(rng.integers(0, 256, (3, 40, 5), dtype=np.uint8)).pixels.shape == (40, 5, 3)
    assert from_array(rng.integers(0, 256, (40, 5, 3), dtype=np.uint8)).pixels.shape == (40, 5, 3)
    assert from_array(rng.integers(0, 256, (4, 40, 3), dtype=np.uint8)).pixels.shape == (4, 40, 3)
    assert from_array(rng.integers(0, 256, (13, 20, 20), dtype=np.uint16)).pixels.shape == (20, 20, 3)


def test_geoimage_validates_shapes() -> None:
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        GeoImage(pixels=np.zeros((4, 4), dtype=np.uint8), valid=np.ones((4, 4), dtype=bool))


# ---- real data (skipped when ../shared/data is absent) --------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason="shared SpaceNet GeoTIFFs not present")
def test_real_spacenet_rasters() -> None:
    rotterdam = DATA / "rotterdam_ms_pan" / "ms1.tif"
    image = read_image(rotterdam, bands=(3, 2, 1))
    with rasterio.open(rotterdam) as src:
        assert image.crs == src.crs and image.transform == src.transform
        assert (image.height, image.width) == (src.height, src.width)
        assert src.dtypes[0] == "float64"
    assert image.bands == (3, 2, 1) and image.crs.to_epsg() == 32631
    assert image.pixels.min() == 0 and image.pixels.max() == 255  # stretched

    custom = DATA / "custom_proj_landsat" / "sample_geotiff_custom_proj.tif"
    landsat = read_image(custom)
    with rasterio.open(custom) as src:
        assert src.crs.to_epsg() is None  # a user-defined Albers CRS
        assert landsat.crs == src.crs
        assert CRS.from_wkt(landsat.crs.to_wkt()) == src.crs
        nodata_all = (src.read() == src.nodata).all(axis=0)
    assert landsat.nodata == -9999.0
    np.testing.assert_array_equal(landsat.valid, ~nodata_all)
