"""The README's Python example works as written (with a tiny model)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd

import samadapt
from samadapt.prompts.types import box, point


def test_readme_python_example(tiny_models: dict[str, Path], utm_raster: Path, tmp_path: Path) -> None:
    seg = samadapt.Segmenter(tiny_models["sam"])
    image = samadapt.read_image(utm_raster)
    result = seg.segment(image, [box(41, 22, 153, 133), point(81, 45)])
    assert result.masks.shape == (2, 300, 500) and result.scores.shape == (2,)
    out = samadapt.write_segmentation(tmp_path / "p.gpkg", result, crs=image.crs, transform=image.transform,
                                      valid=image.valid)
    assert gpd.read_file(out).crs.to_epsg() == 32616
    assert isinstance(seg.segment_everything(image, samadapt.AutomaticOptions(points_per_side=2)),
                      samadapt.SegmentationResult)
