"""The bands a model reads from a raster window by window: read_image's rule, grey as three channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp

from helpers.rasters import write_geotiff
from samadapt.errors import InputError
from samadapt.imagery.windows import bands_for


@pytest.mark.parametrize(("count", "alpha", "expected"), [
    (1, False, (1, 1, 1)), (2, False, (1, 1, 1)), (3, False, (1, 2, 3)), (4, True, (1, 2, 3)), (5, False, (1, 2, 3)),
])
def test_default_bands_follow_read_image(tmp_path: Path, count: int, alpha: bool, expected: tuple[int, ...]) -> None:
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha] if alpha else None
    path = write_geotiff(tmp_path / "r.tif", np.ones((count, 8, 8), np.uint8), colorinterp=interp)
    with rasterio.open(path) as ds:
        assert bands_for(ds, None) == expected


def test_given_bands_are_kept_and_checked(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "r.tif", np.ones((4, 8, 8), np.uint8))
    with rasterio.open(path) as ds:
        assert bands_for(ds, (4, 3, 2, 1)) == (4, 3, 2, 1)  # an adapter trained on four bands takes four
        with pytest.raises(InputError, match="band 5 does not exist: the raster has 4 band"):
            bands_for(ds, (5,))
