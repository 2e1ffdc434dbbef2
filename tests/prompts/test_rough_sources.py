"""Rough-mask prompts and multi-band reads from any source, in physical values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from helpers.httpfiles import serve_files
from helpers.rasters import write_geotiff
from samadapt.imagery.read import read_bands
from samadapt.prompts.rough import index_from_bands


def _scaled_raster(path: Path) -> Path:
    """Two bands of raw counts with a reflectance offset (Sentinel-2 L2A style: value * 1e-4 - 0.1)."""
    rng = np.random.default_rng(0)
    raw = rng.integers(1200, 4000, size=(2, 40, 60)).astype(np.uint16)
    write_geotiff(path, raw)
    with rasterio.open(path, "r+") as ds:
        ds.scales = (1e-4, 1e-4)
        ds.offsets = (-0.1, -0.1)
    return path


def test_index_reads_physical_values_over_http(tmp_path: Path) -> None:
    raster = _scaled_raster(tmp_path / "s2.tif")
    with rasterio.open(raster) as ds:
        green, nir = ds.read().astype(np.float64) * 1e-4 - 0.1
    expected = (green - nir) / (green + nir)
    raw_index = np.subtract(*ds_read(raster)) / np.add(*ds_read(raster))
    assert not np.allclose(expected, raw_index, atol=1e-3)  # the offset matters to the index
    with serve_files(tmp_path) as srv:
        index = index_from_bands(srv.url("s2.tif"), 1, 2)
    np.testing.assert_allclose(index, expected, rtol=1e-5)


def ds_read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float64)


def test_read_bands_takes_a_virtual_path_and_stretches_physical_values(tmp_path: Path) -> None:
    import zipfile

    raster = _scaled_raster(tmp_path / "s2.tif")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.write(raster, "inner/s2.tif")
    pixels, valid = read_bands(f"/vsizip/{tmp_path / 'a.zip'}/inner/s2.tif", [2, 1])
    direct, _ = read_bands(raster, [2, 1])
    assert pixels.shape == (40, 60, 2) and valid.all()
    np.testing.assert_array_equal(pixels, direct)
