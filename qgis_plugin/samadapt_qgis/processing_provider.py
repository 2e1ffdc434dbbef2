"""The samadapt Processing provider and its algorithms.

Each algorithm exports its QGIS layers to temporary GeoPackages, runs samadapt commands
(``segment``, ``predict``, ``data build`` + ``train``, ``data build`` + ``annotate``) through
:mod:`samadapt_qgis.runner`, moves the outputs to the destinations Processing chose, and reports
progress to the feedback bar; cancelling stops the command's process. They run in the model
builder and in batch like any other algorithm.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from qgis.core import (
    QgsFeatureRequest,
    QgsField,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputFolder,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProcessingProvider,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QIcon

from . import settings
from .runner import Cancelled, CommandFailed, Listener, SamadaptNotFound, Steps, run
from .session import raster_path

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")
#: The methods of ``samadapt train --method``.
METHODS = ("domain-decoder", "lora", "mask-decoder", "encoder-adapter", "unet")


class FeedbackListener(Listener):
    """Forwards a command's progress and lines to Processing's feedback, and its cancel button."""

    def __init__(self, feedback: Any) -> None:
        self.feedback = feedback

    def progress(self, fraction: float, task: str) -> None:
        if self.feedback is not None and fraction >= 0:
            self.feedback.setProgress(100.0 * fraction)

    def line(self, text: str) -> None:
        if self.feedback is not None and text.strip():
            self.feedback.pushInfo(text)

    def cancelled(self) -> bool:
        return bool(self.feedback is not None and self.feedback.isCanceled())


def export_layer(layer: QgsVectorLayer, path: str, *, class_field: str = "", class_id_field: str = "") -> str:
    """Write ``layer`` (its CRS, selected features or all) to a GeoPackage at ``path``.

    ``class_id_field``: also write the integer values of ``class_field`` under this name.

    Raises:
        QgsProcessingException: the layer has no CRS, no features, non-integer classes, or cannot be written.
    """
    if not layer.crs().isValid():
        raise QgsProcessingException(f"layer {layer.name()!r} has no CRS; set its CRS so samadapt can place it on "
                                     "the raster")
    if layer.featureCount() == 0:
        raise QgsProcessingException(f"layer {layer.name()!r} has no features")
    source: QgsVectorLayer = layer
    if class_field and class_id_field:
        source = layer.materialize(QgsFeatureRequest())
        provider = source.dataProvider()
        provider.addAttributes([QgsField(class_id_field, QVariant.Int)])
        source.updateFields()
        index = source.fields().indexOf(class_id_field)
        changes = {}
        for feature in source.getFeatures():
            value = feature[class_field]
            try:
                as_int = int(value)
                if as_int != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise QgsProcessingException(f"field {class_field!r} must hold integer class ids (1, 2, ...); "
                                             f"feature {feature.id()} has {value!r}") from None
            changes[feature.id()] = {index: as_int}
        provider.changeAttributeValues(changes)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "prompts"
    code, message = QgsVectorFileWriter.writeAsVectorFormatV3(
        source, path, QgsProject.instance().transformContext(), options)[:2]
    if code != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot write layer {layer.name()!r} to {path}: {message}")
    return path


def segment_command(raster: str, prompts: str, out: str, model: str, class_column: str = "") -> list[str]:
    """``samadapt segment`` of a raster's objects from a prompt file, into ``out``."""
    args = ["segment", raster, "--prompts", prompts, "--out", out, "--model", model]
    return args + ["--class-column", class_column] if class_column else args


def move_vector(src: str, dst: str) -> str:
    """Move the GeoPackage/GeoJSON ``src`` to ``dst``, converting when their formats differ."""
    if os.path.splitext(src)[1].lower() == os.path.splitext(dst)[1].lower():
        _replace(src, dst)
        return dst
    layer = QgsVectorLayer(src, "converted", "ogr")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = QgsVectorFileWriter.driverForExtension(os.path.splitext(dst)[1])
    code, message = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, dst, QgsProject.instance().transformContext(), options)[:2]
    if code != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"cannot write {dst}: {message}")
    return dst


def _replace(src: str, dst: str) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    shutil.move(src, dst)


class SamadaptAlgorithm(QgsProcessingAlgorithm):
    """Shared parts: the group, the icon, running commands with feedback."""

    def group(self) -> str:
        return "samadapt"

    def groupId(self) -> str:  # noqa: N802
        return "samadapt"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def createInstance(self) -> SamadaptAlgorithm:  # noqa: N802
        return type(self)()

    def add_model_parameter(self) -> None:
        self.addParameter(QgsProcessingParameterString(
            "MODEL", "Model (registry name, model folder or .pth file)", defaultValue=settings.get("model")))

    def samadapt(self, args: list[str], feedback: Any, listener: Listener | None = None) -> list[str]:
        """Run ``samadapt <args>``; errors become QgsProcessingException with samadapt's sentence."""
        try:
            exe = settings.executable()
        except SamadaptNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        if feedback is not None:
            feedback.pushCommandInfo(" ".join([exe, *args]))
        try:
            return run(exe, args, listener or FeedbackListener(feedback))
        except (CommandFailed, Cancelled) as exc:
            raise QgsProcessingException(str(exc)) from None

    def raster(self, parameters: dict[str, Any], context: Any, name: str = "INPUT") -> str:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        try:
            return raster_path(layer)
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None

    def workdir(self) -> str:
        from qgis.core import QgsProcessingUtils

        return tempfile.mkdtemp(prefix="samadapt-", dir=QgsProcessingUtils.tempFolder())


class SegmentAlgorithm(SamadaptAlgorithm):
    """``samadapt segment RASTER --prompts LAYER``: one polygon set per prompted object."""

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment objects from a prompts layer"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Segments the objects a layer points at with SAM (or another samadapt model). Polygons are boxes "
                "(their bounding box is the prompt), points are clicks: a 'label' field of 0 makes a point "
                "background, and features sharing an 'object' value are one object. The output polygons are in "
                "the raster's CRS, with the score, the prompt's feature id and, with a class field, its class.")

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "PROMPTS", "Prompts (points, boxes or polygons)",
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field (optional)",
                                                      parentLayerParameterName="PROMPTS", optional=True))
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterNumber("MIN_AREA", "Drop polygons smaller than (pixels)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT", "Segmented objects",
                                                                  QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        raster = self.raster(parameters, context)
        prompts = self.parameterAsVectorLayer(parameters, "PROMPTS", context)
        class_field = self.parameterAsString(parameters, "CLASS_FIELD", context)
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        work = self.workdir()
        prompt_file = export_layer(prompts, os.path.join(work, "prompts.gpkg"))
        written = os.path.join(work, "objects.gpkg")
        args = segment_command(raster, prompt_file, written, self.parameterAsString(parameters, "MODEL", context),
                               class_field)
        self.samadapt(args + ["--min-area", str(self.parameterAsInt(parameters, "MIN_AREA", context))], feedback)
        return {"OUTPUT": move_vector(written, out)}


class MapAlgorithm(SamadaptAlgorithm):
    """``samadapt predict ADAPTER RASTER``: a class raster, polygons and optionally probabilities."""

    def name(self) -> str:
        return "map"

    def displayName(self) -> str:  # noqa: N802
        return "Map a raster with an adapter"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Maps a whole raster, tile by tile, with an adapter trained by samadapt (the Train algorithm or "
                "samadapt train): a class GeoTIFF on the raster's grid, class polygons and, when asked for, class "
                "probabilities. Identical to samadapt predict.")

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterFile("ADAPTER", "Adapter folder",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterNumber("TILE", "Tile side in pixels (0: the model's input size)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber("OVERLAP", "Tile overlap in pixels (-1: samadapt's default)",
                                                       QgsProcessingParameterNumber.Integer, -1, minValue=-1))
        self.addParameter(QgsProcessingParameterRasterDestination("CLASSES", "Classes"))
        self.addParameter(QgsProcessingParameterVectorDestination("POLYGONS", "Class polygons",
                                                                  QgsProcessing.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterRasterDestination("PROBABILITIES", "Class probabilities",
                                                                  optional=True, createByDefault=False))

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        raster = self.raster(parameters, context)
        adapter = self.parameterAsFile(parameters, "ADAPTER", context)
        if not adapter or not os.path.isdir(adapter):
            raise QgsProcessingException(f"the adapter folder {adapter!r} does not exist")
        classes = self.parameterAsOutputLayer(parameters, "CLASSES", context)
        polygons = self.parameterAsOutputLayer(parameters, "POLYGONS", context)
        probabilities = self.parameterAsOutputLayer(parameters, "PROBABILITIES", context)
        work = self.workdir()
        args = ["predict", adapter, raster, "--out", work]
        tile, overlap = self.parameterAsInt(parameters, "TILE", context), self.parameterAsInt(parameters, "OVERLAP",
                                                                                             context)
        if tile:
            args += ["--tile", str(tile)]
        if overlap >= 0:
            args += ["--overlap", str(overlap)]
        if probabilities:
            args.append("--probabilities")
        self.samadapt(args, feedback)
        stem = os.path.splitext(os.path.basename(raster))[0]
        results = {"CLASSES": classes, "POLYGONS": move_vector(os.path.join(work, f"{stem}_polygons.gpkg"), polygons)}
        _replace(os.path.join(work, f"{stem}_classes.tif"), classes)
        if probabilities:
            _replace(os.path.join(work, f"{stem}_probabilities.tif"), probabilities)
            results["PROBABILITIES"] = probabilities
        return results


class TrainAlgorithm(SamadaptAlgorithm):
    """``samadapt data build`` + ``samadapt train``: an adapter from a raster and a polygon layer."""

    def name(self) -> str:
        return "train"

    def displayName(self) -> str:  # noqa: N802
        return "Train an adapter from a raster and polygons"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Cuts the raster into tiles, rasterises the polygons into masks (samadapt data build) and adapts "
                "the model to them (samadapt train). The dataset is kept beside the adapter, in "
                "<adapter>_dataset; the adapter records the split it was trained on. Label budget 0 uses every "
                "tile; N trains on the first N tiles of a seeded shuffle.")

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterVectorLayer("LABELS", "Labelled polygons",
                                                            [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field (optional; else one class)",
                                                      parentLayerParameterName="LABELS", optional=True))
        self.addParameter(QgsProcessingParameterEnum("METHOD", "Method", options=list(METHODS), defaultValue=0))
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterNumber("BUDGET", "Label budget (tiles; 0: all)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs", QgsProcessingParameterNumber.Integer,
                                                       20, minValue=1))
        self.addParameter(QgsProcessingParameterNumber("TILE_SIZE", "Tile side in pixels",
                                                       QgsProcessingParameterNumber.Integer, 512, minValue=32))
        self.addParameter(QgsProcessingParameterNumber("SEED", "Seed", QgsProcessingParameterNumber.Integer, 0))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Adapter folder"))
        self.addOutput(QgsProcessingOutputFolder("DATASET", "Training dataset (tiles and masks)"))

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        raster = self.raster(parameters, context)
        labels = self.parameterAsVectorLayer(parameters, "LABELS", context)
        class_field = self.parameterAsString(parameters, "CLASS_FIELD", context)
        out = self.parameterAsString(parameters, "OUTPUT", context)
        dataset = out.rstrip("/\\") + "_dataset"
        work = self.workdir()
        label_file = export_layer(labels, os.path.join(work, "labels.gpkg"))
        steps = Steps(FeedbackListener(feedback), (1, 9))
        build = ["data", "build", raster, label_file, "--out", dataset, "--overwrite",
                 "--tile-size", str(self.parameterAsInt(parameters, "TILE_SIZE", context))]
        if class_field:
            build += ["--class-field", class_field]
        self.samadapt(build, feedback, steps.step(0))
        train = ["train", dataset, "--out", out, "--overwrite",
                 "--method", METHODS[self.parameterAsEnum(parameters, "METHOD", context)],
                 "--model", self.parameterAsString(parameters, "MODEL", context),
                 "--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context)),
                 "--seed", str(self.parameterAsInt(parameters, "SEED", context))]
        budget = self.parameterAsInt(parameters, "BUDGET", context)
        if budget:
            train += ["--labels", str(budget)]
        self.samadapt(train, feedback, steps.step(1))
        return {"OUTPUT": out, "DATASET": dataset}


class AnnotateAlgorithm(SamadaptAlgorithm):
    """``samadapt data build`` + ``samadapt annotate --mode box``: pseudo-labels from expert boxes."""

    def name(self) -> str:
        return "annotate"

    def displayName(self) -> str:  # noqa: N802
        return "Annotate: pseudo-labels from expert boxes"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Turns expert boxes (polygons; their bounding boxes are the prompts) or points into SAM masks: "
                "the raster is cut into tiles around them (samadapt data build) and each tile's objects are "
                "segmented from their boxes (samadapt annotate --mode box). The output folder is a dataset ready "
                "for the Train algorithm or samadapt train. A class field must hold integer ids; without one "
                "every box is class 1. Optionally the pseudo-labels are also written as polygons over the raster.")

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster"))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "BOXES", "Expert boxes (polygons) or points",
            [QgsProcessing.TypeVectorPolygon, QgsProcessing.TypeVectorPoint]))
        self.addParameter(QgsProcessingParameterField("CLASS_FIELD", "Class field (integer ids; optional)",
                                                      parentLayerParameterName="BOXES", optional=True))
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterNumber("TILE_SIZE", "Tile side in pixels",
                                                       QgsProcessingParameterNumber.Integer, 512, minValue=32))
        self.addParameter(QgsProcessingParameterBoolean("COCO", "Also write annotations.json (COCO)", False))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Annotated dataset"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "POLYGONS", "Pseudo-label polygons", QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False))

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        raster = self.raster(parameters, context)
        boxes = self.parameterAsVectorLayer(parameters, "BOXES", context)
        class_field = self.parameterAsString(parameters, "CLASS_FIELD", context)
        out = self.parameterAsString(parameters, "OUTPUT", context)
        polygons = self.parameterAsOutputLayer(parameters, "POLYGONS", context)
        model = self.parameterAsString(parameters, "MODEL", context)
        work = self.workdir()
        box_file = export_layer(boxes, os.path.join(work, "boxes.gpkg"), class_field=class_field,
                                class_id_field="class_id" if class_field else "")
        steps = Steps(FeedbackListener(feedback), (1, 6, 3) if polygons else (1, 6))
        tiles = os.path.join(work, "tiles")
        build = ["data", "build", raster, box_file, "--out", tiles,
                 "--tile-size", str(self.parameterAsInt(parameters, "TILE_SIZE", context))]
        if class_field:
            build += ["--class-field", "class_id"]
        self.samadapt(build, feedback, steps.step(0))
        annotate = ["annotate", tiles, "--labels", box_file, "--mode", "box", "--out", out, "--overwrite",
                    "--model", model]
        if self.parameterAsBoolean(parameters, "COCO", context):
            annotate += ["--format", "coco"]
        self.samadapt(annotate, feedback, steps.step(1))
        results = {"OUTPUT": out}
        if polygons:
            written = os.path.join(work, "pseudo_labels.gpkg")
            segment = segment_command(raster, box_file, written, model, "class_id" if class_field else "")
            self.samadapt(segment, feedback, steps.step(2))
            results["POLYGONS"] = move_vector(written, polygons)
        return results


class SamadaptProvider(QgsProcessingProvider):
    """The samadapt algorithms in QGIS's Processing toolbox."""

    def id(self) -> str:
        return "samadapt"

    def name(self) -> str:
        return "samadapt"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (SegmentAlgorithm(), MapAlgorithm(), TrainAlgorithm(), AnnotateAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["gpkg", "geojson", "shp"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802,N803
        return "gpkg"

    def defaultRasterFileExtension(self) -> str:  # noqa: N802
        return "tif"
