"""QGIS, offscreen, for the plugin's tests; the samadapt executable they drive; generated rasters.

These tests run under the Python that has QGIS (Debian's python3-qgis, /usr/bin/python3). Without
QGIS they skip, except under ``CI=true``, where a missing QGIS is a failure. The samadapt they
drive is ``$SAMADAPT_EXECUTABLE``, else the repository's ``.venv/bin/samadapt`` (``make install``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["GDAL_PAM_ENABLED"] = "NO"  # QGIS would leave .aux.xml files beside the rasters it reads

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
REPO = PLUGIN_ROOT.parent
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(PLUGIN_ROOT))


def _need(what: str) -> None:
    message = f"the QGIS plugin tests need {what}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; under CI=true this is a failure, not a skip", pytrace=False)
    pytest.skip(message, allow_module_level=True)


try:
    import qgis.core  # noqa: F401
except ImportError:
    _need("QGIS's Python bindings (apt-get install python3-qgis) and this to run under /usr/bin/python3")


@pytest.fixture(scope="session")
def qgis_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A QGIS application with a throw-away profile and Processing initialised."""
    from qgis.core import QgsApplication

    profile = tmp_path_factory.mktemp("qgis-profile")
    app = QgsApplication([], True, str(profile))
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    from samadapt_qgis import service

    service.stop_all()


@pytest.fixture(scope="session")
def samadapt_exe() -> str:
    """The samadapt program the plugin drives."""
    exe = os.environ.get("SAMADAPT_EXECUTABLE") or str(REPO / ".venv" / "bin" / "samadapt")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"no samadapt executable at {exe}; run `make install` or set SAMADAPT_EXECUTABLE", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def tiny_sam(samadapt_exe: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-initialised SAM (input 256 px), written by ``samadapt models tiny``."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sam"
    subprocess.run([samadapt_exe, "models", "tiny", str(folder), "--family", "sam"], check=True,
                   capture_output=True, text=True)
    return str(folder)


@pytest.fixture(scope="session")
def box_exe(samadapt_exe: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """samadapt, with the mask decoder replaced by ``helpers.decoders.box_decoder`` from the main test suite.

    A click gives a square of 24 model pixels around it and a box gives itself, so a polygon in
    the wrong place means the plugin's coordinate chain is wrong. ``--detector bright`` is the main
    suite's ``BrightDetector`` (the phrase "pit" finds the box of the bright pixels). Everything else
    (the server, its encoder, the HTTP API, the CRS handling) is the real ``samadapt serve``.
    """
    python = Path(samadapt_exe).parent / "python"
    script = tmp_path_factory.mktemp("bin") / "samadapt-box-decoder"
    script.write_text(textwrap.dedent(f"""\
        #!{python}
        import sys
        from types import SimpleNamespace

        sys.path.insert(0, {str(REPO / "tests")!r})
        import samadapt.predict.segmenter as segmenter
        from helpers.decoders import box_decoder


        def decode(loaded, embedding, prompts, *, multimask=True):
            return box_decoder(SimpleNamespace(loaded=loaded))(loaded, embedding, prompts, multimask=multimask)


        segmenter.decode = decode

        import samadapt.text.detectors as detectors
        from helpers.text import BrightDetector

        # --detector bright: finds the box of the bright pixels for the phrase "pit"
        real_load = detectors.load_detector
        detectors.load_detector = lambda ref, **kw: BrightDetector() if ref == "bright" else real_load(ref, **kw)
        from samadapt.cli import main

        sys.exit(main())
        """))
    script.chmod(0o755)
    return str(script)


def write_raster(path: Path, crs: str, origin: tuple, pixel: float, size: int = 512,
                 disc: tuple = (200, 260, 60)) -> Path:
    """A 3-band uint8 GeoTIFF: noise with a bright disc at (column, row, radius)."""
    import numpy as np
    from osgeo import gdal, osr

    rng = np.random.default_rng(0)
    data = rng.integers(40, 90, size=(3, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    data[:, (xx - disc[0]) ** 2 + (yy - disc[1]) ** 2 < disc[2] ** 2] = 230
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    ds.SetProjection(srs.ExportToWkt())
    for band in range(3):
        ds.GetRasterBand(band + 1).WriteArray(data[band])
    ds = None
    return path


@pytest.fixture(scope="session")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated rasters on three bodies' CRSs: Mars (IAU code and a PROJ string), the Moon, Earth (UTM)."""
    root = tmp_path_factory.mktemp("rasters")
    return {
        "mars": write_raster(root / "mars.tif", "IAU_2015:49910", (1_000_000.0, 600_000.0), 6.0),
        "mars_proj": write_raster(root / "mars_proj.tif",
                                  "+proj=eqc +lat_ts=0 +lon_0=0 +R=3396190 +units=m +no_defs",
                                  (-300_000.0, 100_000.0), 25.0),
        "moon": write_raster(root / "moon.tif", "IAU_2015:30110", (200_000.0, -50_000.0), 1.0),
        "utm": write_raster(root / "utm.tif", "EPSG:32616", (740_000.0, 3_740_000.0), 0.5),
    }


def shared_data(*parts: str) -> Path:
    """``../shared/data/<parts>``, skipping the test when it is absent (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not present: {path}")
    return path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_STATUS] = int(exitstatus)


_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's status without running QGIS's and Qt's destructors.

    Once the report is printed, the interpreter's teardown of QGIS (QgsApplication and the Qt
    objects Python still holds) sometimes segfaults, which would turn a passing run into exit
    code 139; every fixture, and with it every server, has been torn down by now.
    """
    status = config.stash.get(_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
