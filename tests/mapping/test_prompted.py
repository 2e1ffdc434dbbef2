"""Prompted mapping of many rasters: prompts from a file or a rough mask, failures kept per raster."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from helpers.rasters import write_geotiff
from samadapt.errors import InputError
from samadapt.imagery.preprocess import Preprocessing
from samadapt.mapping.prompted import predict_prompted_rasters
from samadapt.mapping.runner import MapOptions
from samadapt.methods.base import Sample


class BrightObjects:
    """A stand-in mask-decoder adapter: an object's probability is the brightness of band 1."""

    bands = None
    needs_prompts = True
    method = SimpleNamespace(preprocessing=Preprocessing(size=64))

    def predict_sample(self, sample: Sample, prompts: list) -> SimpleNamespace:
        p = sample.pixels[..., 0].astype(np.float32) / 255.0
        return SimpleNamespace(probabilities=np.stack([1 - p, p]))


def _lake(path: Path) -> Path:
    data = np.full((4, 120, 160), 1000, np.uint16)
    data[1, 30:90, 40:120], data[3, 30:90, 40:120] = 3000, 300  # water: green high, NIR low
    return write_geotiff(path, data, nodata=0)


def test_rough_prompts_map_each_raster_and_a_failure_is_kept(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake.tif")
    results = predict_prompted_rasters(BrightObjects(), [lake, tmp_path / "missing.tif"], tmp_path / "out",
                                       rough=(2, 4, 0.0), options=MapOptions(polygons=None))
    assert [r.status for r in results] == ["done", "failed"]
    assert "missing.tif" in results[1].error
    record = json.loads((tmp_path / "out" / "lake.done.json").read_text())
    assert record["prompts"] == 1 and record["tiles"] == 1
    with rasterio.open(results[0].outputs["classes"]) as out:
        assert out.shape == (120, 160)
    again = predict_prompted_rasters(BrightObjects(), [lake], tmp_path / "out", rough=(2, 4, 0.0),
                                     options=MapOptions(polygons=None))
    assert again[0].status == "skipped"


def test_prompt_source_is_one_of_file_or_rough(tmp_path: Path) -> None:
    lake = _lake(tmp_path / "lake.tif")
    with pytest.raises(InputError, match="not both"):
        predict_prompted_rasters("no-such-model", [lake], tmp_path / "out", prompts=tmp_path / "p.csv",
                                 rough=(2, 4, 0.0))
    with pytest.raises(InputError, match="needs --prompts"):
        predict_prompted_rasters("no-such-model", [lake], tmp_path / "out")
    assert not (tmp_path / "out").exists()
