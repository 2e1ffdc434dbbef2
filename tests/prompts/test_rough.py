"""Tests of samadapt.prompts.rough on generated GeoTIFFs and arrays."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from helpers.rasters import write_geotiff
from samadapt.errors import InputError, InputFileError
from samadapt.prompts.rough import (
    clean_mask,
    hsv_range,
    index_from_bands,
    ndwi,
    normalized_difference,
    prompts_from_rough,
    rgb_to_hsv,
    rough_mask,
)
from samadapt.prompts.sampling import SamplingOptions

SCENE_GRID = Affine(10, 0, 500000, 0, -10, 4600000)  # 10 m pixels


def lake_scene(height: int = 80, width: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(4, H, W) uint16 blue, green, red, NIR bands of noisy land with an elliptic lake, and the lake."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    lake = ((yy - 35) / 18.0) ** 2 + ((xx - 55) / 30.0) ** 2 <= 1
    bands = np.empty((4, height, width), np.uint16)
    bands[0] = rng.integers(300, 600, (height, width))
    bands[1] = np.where(lake, rng.integers(1400, 1800, lake.shape), rng.integers(500, 900, lake.shape))  # green
    bands[2] = rng.integers(400, 800, (height, width))
    bands[3] = np.where(lake, rng.integers(100, 400, lake.shape), rng.integers(2000, 3000, lake.shape))  # NIR
    return bands, lake


def test_ndwi_threshold_finds_the_lake_and_one_box_covers_it(tmp_path: Path) -> None:
    bands, lake = lake_scene()
    path = write_geotiff(tmp_path / "scene.tif", bands, crs="EPSG:32633", transform=SCENE_GRID)
    index = ndwi(path, green=2, nir=4)
    assert index.dtype == np.float32 and index.shape == lake.shape
    np.testing.assert_array_equal(index, ndwi(bands, green=2, nir=4))
    mask = rough_mask(index=index, threshold=0.0, min_area=20)
    iou = (mask & lake).sum() / (mask | lake).sum()
    assert iou > 0.95
    (prompt,) = prompts_from_rough(mask)
    x0, y0, x1, y1 = prompt.box
    rows, cols = np.nonzero(lake)
    assert x0 <= cols.min() and y0 <= rows.min() and x1 >= cols.max() + 1 and y1 >= rows.max() + 1
    assert (x1 - x0) * (y1 - y0) < 1.1 * (np.ptp(cols) + 1) * (np.ptp(rows) + 1)
    points = prompts_from_rough(mask, SamplingOptions(mode="points", n_pos=3, n_neg=2, erode=3, min_spacing=5))[0]
    for (x, y), label in zip(points.points, points.labels, strict=False):
        assert lake[int(y), int(x)] == bool(label)


def test_index_from_bands_turns_nodata_into_nan(tmp_path: Path) -> None:
    bands, _ = lake_scene(20, 30)
    bands[:, 0, :5] = 0
    path = write_geotiff(tmp_path / "nodata.tif", bands, crs="EPSG:32633", transform=SCENE_GRID, nodata=0)
    index = index_from_bands(path, 2, 4)
    assert np.isnan(index[0, :5]).all() and np.isfinite(index[1:]).all()
    expected = (bands[1, 5, 5] - float(bands[3, 5, 5])) / (bands[1, 5, 5] + float(bands[3, 5, 5]))
    assert index[5, 5] == pytest.approx(expected, rel=1e-6)


def test_normalized_difference_nan_on_zero_sum_and_invalid() -> None:
    a = np.array([[3, 0, 1]], np.uint16)
    b = np.array([[1, 0, 1]], np.uint16)
    out = normalized_difference(a, b, valid=np.array([[True, True, False]]))
    assert out.dtype == np.float32
    assert out[0, 0] == pytest.approx(0.5) and np.isnan(out[0, 1]) and np.isnan(out[0, 2])
    assert normalized_difference(np.array([[1, 0]]), np.array([[3, 5]])).tolist() == [[-0.5, -1.0]]


@settings(max_examples=30, deadline=None)
@given(rgb=arrays(np.uint8, (4, 5, 3)))
def test_rgb_to_hsv_matches_colorsys(rgb: np.ndarray) -> None:
    hsv = rgb_to_hsv(rgb)
    for (r, g, b), (h, s, v) in zip(rgb.reshape(-1, 3), hsv.reshape(-1, 3), strict=False):
        eh, es, ev = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert (h, s, v) == pytest.approx((eh * 360 % 360, es, ev), abs=1e-9)
        assert 0 <= h < 360


def test_hsv_range_wraps_around_red() -> None:
    colours = {
        "red": (255, 0, 0),  # 0 deg
        "crimson": (220, 20, 60),  # ~348 deg
        "orange-red": (255, 60, 0),  # ~14 deg
        "orange": (255, 165, 0),  # ~39 deg
        "green": (0, 200, 0),
        "blue": (0, 0, 255),
        "magenta": (255, 0, 255),  # 300 deg
        "grey": (128, 128, 128),
        "dark red": (40, 0, 0),
    }
    rgb = np.array([list(colours.values())], np.uint8)
    hit = dict(zip(colours, hsv_range(rgb, (340, 0.3, 0.3), (20, 1.0, 1.0))[0], strict=False))
    assert {name for name, inside in hit.items() if inside} == {"red", "crimson", "orange-red"}
    plain = dict(zip(colours, hsv_range(rgb, (90, 0.3, 0.3), (270, 1.0, 1.0))[0], strict=False))
    assert {name for name, inside in plain.items() if inside} == {"green", "blue"}


def test_hsv_source_in_rough_mask() -> None:
    rgb = np.full((30, 30, 3), (90, 140, 60), np.uint8)  # green fields
    rgb[10:20, 5:25] = (30, 60, 160)  # blue water
    mask = rough_mask(hsv=(rgb, (200, 0.4, 0.2), (250, 1.0, 1.0)))
    assert mask.sum() == 200 and mask[10:20, 5:25].all()


def test_clean_mask_removes_specks_erodes_and_fills() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[30, 30] = mask[35, 2:4] = True  # specks of 1 and 2 pixels
    mask[12:15, 12:15] = False  # a hole
    cleaned = clean_mask(mask, min_area=5)
    assert not cleaned[30, 30] and not cleaned[35, 2:4].any() and cleaned[5:25, 5:25].sum() == 400 - 9
    assert clean_mask(mask, min_area=5, fill_holes=True).sum() == 400
    eroded = clean_mask(mask, min_area=5, erode=2, fill_holes=True)
    assert eroded.sum() == 16 * 16 and eroded[7:23, 7:23].sum() == eroded.sum()
    edge = np.zeros((10, 10), bool)
    edge[:, :6] = True  # a blob cut by the image edge is not eroded from that side
    assert clean_mask(edge, erode=1)[:, 0].all()


def test_rough_mask_threshold_direction_and_user_mask() -> None:
    index = np.array([[-0.5, 0.1, np.nan, 0.4]])
    assert rough_mask(index=index).tolist() == [[False, True, False, True]]
    assert rough_mask(index=index, threshold=0.2, above=False).tolist() == [[True, True, False, False]]
    user = np.array([[0, 255, 255, 0]], np.uint8)
    assert rough_mask(user_mask=user).tolist() == [[False, True, True, False]]
    (prompt,) = prompts_from_rough(user)  # 255 is object here, not ignore
    assert prompt.box.tolist() == [1, 0, 3, 1]


def test_errors_for_sources_and_bands(tmp_path: Path) -> None:
    index = np.zeros((4, 4))
    with pytest.raises(InputError, match="needs one source"):
        rough_mask()
    with pytest.raises(InputError, match="index and user_mask; give exactly one source"):
        rough_mask(index=index, user_mask=index > 0)
    bands, _ = lake_scene(10, 12)
    path = write_geotiff(tmp_path / "small.tif", bands, crs="EPSG:32633", transform=SCENE_GRID)
    with pytest.raises(InputError, match="band 5 does not exist: small.tif has 4 band"):
        ndwi(path, green=2, nir=5)
    with pytest.raises(InputError, match="band 0 does not exist"):
        ndwi(bands, green=0, nir=4)
    with pytest.raises(InputFileError, match="not found"):
        index_from_bands(tmp_path / "missing.tif", 2, 4)
    with pytest.raises(InputError, match="hue in"):
        hsv_range(np.zeros((2, 2, 3), np.uint8), (0, 0, 0), (400, 1, 1))
    with pytest.raises(InputError, match="uint8"):
        rgb_to_hsv(np.zeros((2, 2, 3)))
