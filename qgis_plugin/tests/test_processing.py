"""The Processing algorithms, run through ``processing.run`` as the toolbox, model builder and batch do.

They drive the real samadapt CLI with the tiny SAM on the shared Atlanta GeoTIFF (EPSG:32616) and
its building polygons, and on a generated Mars raster; outputs must open as valid layers in the
raster's CRS, and "map with adapter" must give the class raster ``samadapt predict`` gives.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_data

ATLANTA = ("spacenet_geotiff", "atlanta_buildings")


@pytest.fixture(scope="module")
def provider(qgis_app: Any, samadapt_exe: str) -> Any:
    from qgis.core import QgsApplication

    from samadapt_qgis import settings
    from samadapt_qgis.processing_provider import SamadaptProvider

    settings.put("executable", samadapt_exe)
    found = SamadaptProvider()
    QgsApplication.processingRegistry().addProvider(found)
    yield found
    QgsApplication.processingRegistry().removeProvider(found)


def vector(path: Path, name: str = "v") -> Any:
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(str(path), name, "ogr")
    assert layer.isValid(), path
    return layer


def raster(path: Path) -> Any:
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid(), path
    return layer


def read_band(path: str) -> Any:
    from osgeo import gdal

    ds = gdal.Open(path)
    try:
        return ds.GetRasterBand(1).ReadAsArray()
    finally:
        ds = None


def some_buildings(tmp_path: Path, count: int = 6) -> Any:
    """The first ``count`` Atlanta building polygons, as a memory layer in their CRS."""
    from qgis.core import QgsVectorLayer

    labels = vector(shared_data(*ATLANTA, "geotiff_labels.geojson"))
    subset = QgsVectorLayer(f"Polygon?crs={labels.crs().authid()}", "buildings", "memory")
    subset.dataProvider().addAttributes(labels.fields().toList())
    subset.updateFields()
    subset.dataProvider().addFeatures([f for i, f in enumerate(labels.getFeatures()) if i < count])
    return subset


@pytest.mark.realdata
def test_segment_from_a_prompts_layer_gives_polygons_in_the_rasters_crs(provider: Any, tiny_sam: str,
                                                                        tmp_path: Path) -> None:
    import processing

    image = raster(shared_data(*ATLANTA, "sample_geotiff.tif"))
    prompts = some_buildings(tmp_path)
    out = tmp_path / "segmented.gpkg"
    result = processing.run("samadapt:segment", {"INPUT": image, "PROMPTS": prompts, "MODEL": tiny_sam,
                                                 "OUTPUT": str(out)})
    layer = vector(Path(result["OUTPUT"]))
    assert result["OUTPUT"] == str(out)
    assert layer.crs().authid() == "EPSG:32616"
    assert layer.featureCount() > 0
    assert {"score", "prompt_id"} <= set(layer.fields().names())
    assert layer.extent().intersects(image.extent())


@pytest.mark.realdata
def test_train_then_map_gives_the_class_raster_of_samadapt_predict(provider: Any, tiny_sam: str, samadapt_exe: str,
                                                                   tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingFeedback

    image_path = shared_data(*ATLANTA, "sample_geotiff.tif")
    image = raster(image_path)
    labels = vector(shared_data(*ATLANTA, "geotiff_labels.geojson"), "buildings")
    progress: list = []
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(progress.append)
    trained = processing.run("samadapt:train", {
        "INPUT": image, "LABELS": labels, "METHOD": 0, "MODEL": tiny_sam, "BUDGET": 3, "EPOCHS": 1,
        "TILE_SIZE": 256, "OUTPUT": str(tmp_path / "adapter")}, feedback=feedback)
    adapter = Path(trained["OUTPUT"])
    assert (adapter / "config.json").is_file()
    assert any(Path(trained["DATASET"], "images").iterdir()) and any(Path(trained["DATASET"], "masks").iterdir())
    assert progress and max(progress) >= 99.0  # the two commands filled QGIS's progress bar
    assert sorted(progress) == progress  # and it only moved forward

    mapped = processing.run("samadapt:map", {
        "INPUT": image, "ADAPTER": str(adapter), "CLASSES": str(tmp_path / "classes.tif"),
        "POLYGONS": str(tmp_path / "polygons.gpkg"), "PROBABILITIES": str(tmp_path / "probabilities.tif")})
    classes = raster(Path(mapped["CLASSES"]))
    assert classes.crs().authid() == "EPSG:32616"
    assert (classes.width(), classes.height()) == (image.width(), image.height())
    assert vector(Path(mapped["POLYGONS"])).crs().authid() == "EPSG:32616"
    assert raster(Path(mapped["PROBABILITIES"])).bandCount() >= 1

    direct = tmp_path / "direct"
    subprocess.run([samadapt_exe, "predict", str(adapter), str(image_path), "--out", str(direct)], check=True,
                   capture_output=True, text=True)
    import numpy as np

    np.testing.assert_array_equal(read_band(mapped["CLASSES"]), read_band(str(direct / "sample_geotiff_classes.tif")))


@pytest.mark.realdata
def test_annotate_turns_expert_boxes_into_a_dataset_and_polygons(provider: Any, tiny_sam: str,
                                                                 tmp_path: Path) -> None:
    import processing

    image = raster(shared_data(*ATLANTA, "sample_geotiff.tif"))
    boxes = some_buildings(tmp_path, 8)
    result = processing.run("samadapt:annotate", {
        "INPUT": image, "BOXES": boxes, "MODEL": tiny_sam, "TILE_SIZE": 256, "COCO": True,
        "OUTPUT": str(tmp_path / "pseudo"), "POLYGONS": str(tmp_path / "pseudo.gpkg")})
    out = Path(result["OUTPUT"])
    assert any((out / "images").iterdir()) and any((out / "masks").iterdir())
    assert (out / "annotations.json").is_file()
    polygons = vector(Path(result["POLYGONS"]))
    assert polygons.crs().authid() == "EPSG:32616" and polygons.featureCount() > 0


def test_segment_on_mars_keeps_the_mars_crs(provider: Any, tiny_sam: str, rasters: dict[str, Path],
                                            tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsProject, QgsVectorLayer


    image = raster(rasters["mars"])
    points = QgsVectorLayer("Point", "clicks", "memory")
    points.setCrs(image.crs())
    centre = image.extent().center()
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(centre)))
    points.dataProvider().addFeatures([feature])
    # as the toolbox runs it: the output is loaded into the project on completion
    result = processing.runAndLoadResults("samadapt:segment", {"INPUT": image, "PROMPTS": points, "MODEL": tiny_sam,
                                                               "OUTPUT": str(tmp_path / "mars.gpkg")})
    loaded = [layer for layer in QgsProject.instance().mapLayers().values()
              if layer.source().split("|")[0] == result["OUTPUT"]]
    assert len(loaded) == 1 and loaded[0].crs() == image.crs()


def test_a_missing_executable_is_one_clear_sentence(provider: Any, rasters: dict[str, Path], tmp_path: Path,
                                                    samadapt_exe: str) -> None:
    import processing
    from qgis.core import QgsProcessingException

    from samadapt_qgis import settings

    settings.put("executable", str(tmp_path / "nowhere" / "samadapt"))
    try:
        with pytest.raises(QgsProcessingException, match="does not exist or cannot be run"):
            processing.run("samadapt:map", {"INPUT": raster(rasters["utm"]), "ADAPTER": str(tmp_path),
                                            "CLASSES": str(tmp_path / "c.tif"), "POLYGONS": str(tmp_path / "p.gpkg")})
    finally:
        settings.put("executable", samadapt_exe)


def test_samadapts_own_error_sentence_reaches_the_user(provider: Any, rasters: dict[str, Path],
                                                       tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    (tmp_path / "not-an-adapter").mkdir()
    with pytest.raises(QgsProcessingException, match="samadapt predict failed: .*not-an-adapter"):
        processing.run("samadapt:map", {"INPUT": raster(rasters["utm"]), "ADAPTER": str(tmp_path / "not-an-adapter"),
                                        "CLASSES": str(tmp_path / "c.tif"), "POLYGONS": str(tmp_path / "p.gpkg")})
    assert not (tmp_path / "c.tif").exists()


def test_cancelling_stops_the_command_and_its_process(provider: Any, tiny_sam: str, rasters: dict[str, Path],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long training is cancelled from the feedback: the algorithm fails at once and no process is left."""
    import processing
    from qgis.core import (
        QgsFeature,
        QgsGeometry,
        QgsProcessingException,
        QgsProcessingFeedback,
        QgsRectangle,
        QgsVectorLayer,
    )

    from samadapt_qgis import runner

    started: list = []
    real_popen = runner.popen
    monkeypatch.setattr(runner, "popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    image = raster(rasters["utm"])
    labels = QgsVectorLayer("Polygon", "disc", "memory")
    labels.setCrs(image.crs())
    e = image.extent()
    f = QgsFeature()
    f.setGeometry(QgsGeometry.fromRect(QgsRectangle(e.xMinimum() + 70, e.yMaximum() - 160, e.xMinimum() + 130,
                                                    e.yMaximum() - 100)))
    labels.dataProvider().addFeatures([f])
    feedback = QgsProcessingFeedback()
    # cancel once training has reported progress (the second command), from another thread as QGIS's button does
    watcher = threading.Thread(target=lambda: runner.wait_until(lambda: len(started) >= 2 and feedback.progress() > 10,
                                                                300) and feedback.cancel(), daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("samadapt:train", {"INPUT": image, "LABELS": labels, "MODEL": tiny_sam, "EPOCHS": 500,
                                          "TILE_SIZE": 128, "OUTPUT": str(tmp_path / "adapter")}, feedback=feedback)
    assert time.monotonic() - t0 < 240
    assert len(started) == 2 and all(p.poll() is not None for p in started)
    assert not (tmp_path / "adapter" / "config.json").exists()


def test_segment_runs_inside_a_processing_model(provider: Any, tiny_sam: str, rasters: dict[str, Path],
                                                tmp_path: Path) -> None:
    """A model as the model builder saves it: the segment algorithm as a child, fed by the model's inputs."""
    import processing
    from qgis.core import (
        QgsFeature,
        QgsGeometry,
        QgsPointXY,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterVectorLayer,
        QgsVectorLayer,
    )

    model = QgsProcessingModelAlgorithm("segment pits", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), QgsProcessingModelParameter("image"))
    model.addModelParameter(QgsProcessingParameterVectorLayer("clicks", "Clicks"),
                            QgsProcessingModelParameter("clicks"))
    child = QgsProcessingModelChildAlgorithm("samadapt:segment")
    child.setChildId("segment")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    child.addParameterSources("PROMPTS", [QgsProcessingModelChildParameterSource.fromModelParameter("clicks")])
    child.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue(tiny_sam)])
    child.addParameterSources("MIN_AREA", [QgsProcessingModelChildParameterSource.fromStaticValue(0)])
    output = QgsProcessingModelOutput("objects")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"objects": output})
    model.addChildAlgorithm(child)
    assert model.initAlgorithm() is None and model.childAlgorithm("segment").algorithm() is not None

    image = raster(rasters["utm"])
    clicks = QgsVectorLayer("Point", "clicks", "memory")
    clicks.setCrs(image.crs())
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(image.extent().center())))
    clicks.dataProvider().addFeatures([feature])
    result = processing.run(model, {"image": image, "clicks": clicks,
                                    "segment:objects": str(tmp_path / "objects.gpkg")})
    layer = vector(Path(result["segment:objects"]))
    assert layer.crs().authid() == "EPSG:32616" and "score" in layer.fields().names()
