"""Shared fixtures: tiny models of each family, an isolated SAMADAPT_HOME, generated rasters.

Only fixtures live here; the functions tests call (the CLI runner, generated data, raster
writers, stand-in decoders) are in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

# huggingface_hub reads this once, on import: no test may send its telemetry request to the real hub.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from helpers.rasters import UTM, write_geotiff  # noqa: E402
from samadapt.models.tiny import save_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own SAMADAPT_HOME, and no test can reach a real model hub."""
    home = tmp_path_factory.mktemp("samadapt-home")
    monkeypatch.setenv("SAMADAPT_HOME", str(home))
    monkeypatch.setenv("SAMADAPT_HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    # An empty Hugging Face cache of its own, no token, online unless a test says otherwise.
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders with a tiny random model of each family, in the transformers layout."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family) for family in ("sam", "sam2", "sam-hq")}


@pytest.fixture(params=["sam", "sam2", "sam-hq"])
def tiny_model(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Path:
    """Each family's tiny model in turn."""
    return tiny_models[request.param]


@pytest.fixture
def textured_image() -> np.ndarray:
    """A (300, 500, 3) uint8 image: noise with a bright disc and a dark square."""
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, size=(300, 500, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:300, :500]
    img[(xx - 120) ** 2 + (yy - 150) ** 2 < 50**2] = 230
    img[60:140, 300:420] = 10
    return img


@pytest.fixture
def utm_raster(tmp_path: Path, textured_image: np.ndarray) -> Path:
    """A 3-band uint8 GeoTIFF in EPSG:32616 with non-square pixels and a nodata strip."""
    path = tmp_path / "utm.tif"
    data = np.moveaxis(textured_image, 2, 0).copy()
    data[:, :, :20] = 0
    return write_geotiff(path, data, crs=UTM, transform=from_origin(740000.0, 3740000.0, 0.5, 0.75), nodata=0)
