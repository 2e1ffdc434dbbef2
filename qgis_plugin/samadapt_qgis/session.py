"""Interactive prompting of one raster layer: prompts in, polygons into an output layer.

A :class:`PromptSession` serves its raster with ``samadapt serve`` (started in the background)
and keeps a list of objects, each a list of prompts in the layer's CRS: foreground and
background points and at most one box. After every change to the current object its prompts
go to ``POST /segment`` in a worker thread, and the answer replaces that object's polygons in
the output layer (a memory layer in the raster's CRS with ``object_id``, ``score``,
``prompts``, ``model``; it can be saved as a GeoPackage).

The first request of a part of the raster computes its encoding, which takes seconds on a
CPU; the session says so, and says when a later click reused an encoding.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QObject, QVariant, pyqtSignal

from . import geo
from .runner import find_executable
from .service import SOURCE_NAME, ServiceError, ServiceProcess

#: Largest view sent with a request, in raster pixels a side (the service refuses larger ones).
MAX_VIEW_PIXELS = 2048
#: Smallest view, in raster pixels a side.
MIN_VIEW_PIXELS = 64
#: Field names of the output layer.
FIELDS = (("object_id", QVariant.Int), ("score", QVariant.Double), ("prompts", QVariant.Int),
          ("model", QVariant.String), ("phrase", QVariant.String))


@dataclass
class Prompt:
    """A click (``point``, label 1 foreground, 0 background) or a ``box``, in the layer's CRS."""

    kind: str
    point: QgsPointXY | None = None
    box: QgsRectangle | None = None
    label: int = 1


@dataclass
class PromptObject:
    """One object: its id in the output layer and its prompts, in the order given."""

    object_id: int
    prompts: list[Prompt] = field(default_factory=list)
    version: int = 0  # counts changes, so a late answer to older prompts is recognised


def raster_path(layer: QgsRasterLayer) -> str:
    """The file (or GDAL path) behind a raster layer, as samadapt reads it.

    Raises:
        ValueError: the layer is not a GDAL raster (a WMS or XYZ layer, say).
    """
    if layer is None or not layer.isValid():
        raise ValueError("choose a valid raster layer first")
    if layer.providerType() != "gdal":
        raise ValueError(f"layer {layer.name()!r} is a {layer.providerType()} layer; samadapt reads raster files "
                         "(GeoTIFF, JPEG 2000, ISIS3 .cub, PDS4, ...), /vsi paths and URLs")
    return layer.source().split("|")[0]


def output_layer(crs: Any, name: str = "samadapt objects") -> QgsVectorLayer:
    """An empty memory layer of polygons in ``crs`` with the session's fields."""
    layer = QgsVectorLayer(f"MultiPolygon?crs={crs.authid()}" if crs.authid() else "MultiPolygon", name, "memory")
    layer.setCrs(crs)
    fields = QgsFields()
    for fname, ftype in FIELDS:
        fields.append(QgsField(fname, ftype))
    layer.dataProvider().addAttributes(fields.toList())
    layer.updateFields()
    return layer


def save_layer(layer: QgsVectorLayer, path: str) -> str:
    """Write ``layer`` to a GeoPackage at ``path`` (a temporary file renamed into place: no half file).

    Raises:
        OSError: the file cannot be written (its message says why).
    """
    path = path if path.lower().endswith(".gpkg") else path + ".gpkg"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(f"the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".samadapt-", suffix=".gpkg", dir=folder)
    os.close(fd)
    os.remove(tmp)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = os.path.splitext(os.path.basename(path))[0]
    result = QgsVectorFileWriter.writeAsVectorFormatV3(layer, tmp, QgsProject.instance().transformContext(), options)
    code, message = result[0], result[1]
    if code != QgsVectorFileWriter.NoError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"cannot write {path}: {message}")
    os.replace(tmp, path)
    return path


def request_body(prompts: list[dict[str, Any]], view: QgsRectangle, to_body: QgsCoordinateTransform) -> dict[str, Any]:
    """A ``POST /segment`` body: service prompts over ``view`` (layer CRS) of the served raster."""
    return {"bbox": geo.lnglat_bbox(geo.rect_points(view), to_body), "prompt": prompts, "zoom": 0,
            "source_type": SOURCE_NAME}


class _Relay(QObject):
    """Carries a worker thread's answer to the main thread (a queued signal)."""

    done = pyqtSignal(object)
    found = pyqtSignal(object)


class PromptSession(QObject):
    """Prompting on one raster layer through a background ``samadapt serve``.

    Signals:
        status(str): what is happening, for the dock's status line.
        failed(str): an error sentence.
        changed(): the output layer or the prompts changed.
    """

    status = pyqtSignal(str)
    failed = pyqtSignal(str)
    changed = pyqtSignal()

    def __init__(self, layer: QgsRasterLayer, *, model: str, executable: str = "", adapter: str = "",
                 device: str = "cpu", detector: str = "", output: QgsVectorLayer | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.raster = raster_path(layer)
        self.model = model
        self.server = ServiceProcess(find_executable(executable), self.raster, model, adapter, device, detector)
        self.output = output or output_layer(layer.crs(), f"samadapt objects ({layer.name()})")
        self.objects: list[PromptObject] = [PromptObject(1)]
        self.busy = False
        self.requests = 0
        self.last_answer: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._pending = False
        self._relay = _Relay()
        self._relay.done.connect(self._answered)
        self._relay.found.connect(self._found)
        self._last_id = 0  # the highest object id given to objects found by name
        # the layer's CRS as text and its centre: what worker threads may read
        crs = layer.crs()
        self._layer_crs = crs.authid() or crs.toWkt(crs.WKT_PREFERRED)
        self._centre = QgsPointXY(layer.extent().center())
        self._from_body: QgsCoordinateTransform | None = None
        self._source: dict[str, Any] | None = None

    # -- the server ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving the raster (returns at once; the first prompt waits for the server)."""
        self.server.start()
        self.status.emit(f"starting samadapt serve for {self.layer.name()} with {self.model}...")

    def stop(self) -> None:
        """Stop the server; the output layer stays."""
        self.server.stop()
        self.status.emit("server stopped")

    def _connect(self) -> QgsCoordinateTransform:
        """Worker thread: wait for the server and read its source (once); the layer -> lng/lat transform.

        The transform is made anew in the thread that uses it: a QgsCoordinateTransform made in
        another thread (whose PROJ context is gone) silently returns its input.
        """
        if self._source is None:
            self._source = self.server.source()
        return self._transform(to_body=True)

    def _transform(self, to_body: bool) -> QgsCoordinateTransform:
        """Layer CRS <-> the body's lng/lat, from CRSs made in the calling thread (QGIS's CRS and transform
        objects carry per-thread PROJ objects: one made in another thread can fail or silently do nothing)."""
        assert self._source is not None
        layer_crs, body = geo.body_crs(self._layer_crs), geo.body_crs(self._source["crs"])
        if to_body:
            return geo.transform(layer_crs, body, self._centre)
        return geo.transform(body, layer_crs, geo.transform(layer_crs, body, self._centre).transform(self._centre))

    # -- prompts ---------------------------------------------------------------------------------

    @property
    def current(self) -> PromptObject:
        """The object being prompted."""
        return self.objects[-1]

    def add_point(self, point: QgsPointXY, label: int = 1) -> None:
        """A click in the layer's CRS: label 1 marks the object, 0 the background."""
        if not self.layer.extent().contains(point):
            self.failed.emit("the click is outside the raster layer; click on the imagery")
            return
        self.current.prompts.append(Prompt("point", point=QgsPointXY(point), label=1 if label else 0))
        self._changed()

    def set_box(self, box: QgsRectangle) -> None:
        """A box in the layer's CRS around the object; it replaces the object's earlier box."""
        box = box.intersect(self.layer.extent())
        if box.isEmpty():
            self.failed.emit("the box is outside the raster layer; draw it on the imagery")
            return
        self.current.prompts = [p for p in self.current.prompts if p.kind != "box"]
        self.current.prompts.append(Prompt("box", box=QgsRectangle(box)))
        self._changed()

    def undo(self) -> None:
        """Take back the last prompt; with none left, go back to the previous object."""
        if self.current.prompts:
            self.current.prompts.pop()
        elif len(self.objects) > 1:
            self.objects.pop()
            self.status.emit(f"back to object {self.current.object_id}")
            self.changed.emit()
            return
        else:
            return
        self._changed()

    def new_object(self) -> None:
        """Keep the current object's polygons and start the next object."""
        if not self.current.prompts:
            return
        self.objects.append(PromptObject(max(self.current.object_id, self._last_id) + 1))
        self.status.emit(f"object {self.current.object_id}: click, shift-click or drag a box")
        self.changed.emit()

    def save(self, path: str) -> str:
        """Save the output layer as a GeoPackage; returns the path written."""
        return save_layer(self.output, path)

    # -- requests --------------------------------------------------------------------------------

    def _changed(self) -> None:
        self.current.version += 1
        if not self.current.prompts:
            self._replace(self.current.object_id, [])
            self.changed.emit()
            return
        if self.busy:
            self._pending = True  # answered after the request in flight, with the prompts as they are then
            return
        self._send()

    def _view(self, prompts: list[Prompt]) -> QgsRectangle:
        """The area sent with a request (layer CRS): around the prompts, within the raster, at most
        MAX_VIEW_PIXELS a side; the service falls back to it for objects cut by its encoding cells."""
        px, py = geo.pixel_size(self.layer)
        xs: list[float] = []
        ys: list[float] = []
        for p in prompts:
            if p.point is not None:
                xs.append(p.point.x())
                ys.append(p.point.y())
            if p.box is not None:
                xs += [p.box.xMinimum(), p.box.xMaximum()]
                ys += [p.box.yMinimum(), p.box.yMaximum()]
        width = max(max(xs) - min(xs), MIN_VIEW_PIXELS * px, min(MAX_VIEW_PIXELS * px, self.layer.width() * px))
        height = max(max(ys) - min(ys), MIN_VIEW_PIXELS * py, min(MAX_VIEW_PIXELS * py, self.layer.height() * py))
        return self._capped((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, width, height)

    def _capped(self, cx: float, cy: float, width: float, height: float) -> QgsRectangle:
        """The ``width`` x ``height`` rectangle centred on (cx, cy), at most MAX_VIEW_PIXELS a side, within the
        raster."""
        px, py = geo.pixel_size(self.layer)
        half_w, half_h = min(width, MAX_VIEW_PIXELS * px) / 2, min(height, MAX_VIEW_PIXELS * py) / 2
        return QgsRectangle(cx - half_w, cy - half_h, cx + half_w, cy + half_h).intersect(self.layer.extent())

    def payload(self, prompts: list[Prompt], view: QgsRectangle, to_body: QgsCoordinateTransform) -> dict[str, Any]:
        """The ``POST /segment`` body of an object's prompts; ``view`` from :meth:`_view`, ``to_body`` from
        :meth:`_connect`."""
        items: list[dict[str, Any]] = []
        for p in prompts:
            if p.kind == "point" and p.point is not None:
                items.append({"type": "point", "data": geo.lnglat(p.point, to_body), "label": p.label})
            elif p.box is not None:
                items.append({"type": "rectangle", "data": geo.lnglat_bbox(geo.rect_points(p.box), to_body)})
        return request_body(items, view, to_body)

    def _send(self) -> None:
        obj = self.current
        prompts, version = list(obj.prompts), obj.version
        view = self._view(prompts)  # the layer is read here, in the main thread
        self.busy = True
        self.requests += 1
        if self.requests == 1:
            self.status.emit("computing the image encoding of this area (the first click takes a while on a CPU; "
                             "later clicks here reuse it)...")
        else:
            self.status.emit(f"segmenting object {obj.object_id}...")
        relay = self._relay
        started = time.monotonic()

        def work() -> None:
            try:
                answer: Any = self.server.segment(self.payload(prompts, view, self._connect()))
                relay.done.emit((obj, version, len(prompts), answer, time.monotonic() - started))
            except (ServiceError, geo.CrsError, OSError, ValueError, KeyError) as exc:
                relay.done.emit((obj, version, len(prompts), exc, time.monotonic() - started))

        threading.Thread(target=work, daemon=True).start()

    def _answered(self, result: tuple[PromptObject, int, int, Any, float]) -> None:
        self._guarded(self._take, result)

    def _found(self, result: tuple[str, Any, float]) -> None:
        self._guarded(self._take_found, result)

    def _guarded(self, take: Any, result: tuple[Any, ...]) -> None:
        """Run a slot's work; an exception escaping a slot aborts QGIS (PyQt5), so every error becomes a message."""
        try:
            take(*result)
        except Exception as exc:  # noqa: BLE001
            self.busy = self._pending = False
            self.last_error = f"cannot show the answer of samadapt serve: {exc}"
            self.failed.emit(self.last_error)
            self.changed.emit()

    def _take(self, obj: PromptObject, version: int, count: int, answer: Any, seconds: float) -> None:
        object_id = obj.object_id
        self.busy = False
        if isinstance(answer, Exception):
            self.last_error = str(answer)
            self.failed.emit(str(answer))
        else:
            self.last_answer = answer
            self.last_error = None
            # an answer to prompts that have changed since (undo, another click) is not shown
            if obj.version == version and any(o is obj for o in self.objects):
                self._show(object_id, count, answer)
            took = f"{seconds:.1f} s"
            if answer.get("cache_hit"):
                self.status.emit(f"object {object_id}: {len(answer.get('features', []))} polygon(s); "
                                 f"the encoding was reused ({took})")
            else:
                self.status.emit(f"object {object_id}: {len(answer.get('features', []))} polygon(s); "
                                 f"encoding computed ({took})")
        if self._pending:
            self._pending = False
            if self.current.prompts:
                self._send()
        self.changed.emit()

    def _features(self, answer: dict[str, Any], first_id: int, same_id: bool, prompts: int,
                  phrase: str | None = None) -> list[QgsFeature]:
        """The polygons of a service answer as output-layer features in the layer's CRS: all with ``first_id``
        (``same_id``: one prompted object) or numbered from it (objects found by name), with their phrase."""
        if self._from_body is None:  # made and used in the main thread
            self._from_body = self._transform(to_body=False)
        features = []
        for item in answer.get("features", []):
            geom = geo.to_layer(item["geometry"], self._from_body)
            if geom.type() != QgsWkbTypes.PolygonGeometry:
                continue
            geom.convertToMultiType()
            feature = QgsFeature(self.output.fields())
            feature.setGeometry(geom)
            props = item.get("properties", {})
            object_id = first_id if same_id else first_id + len(features)
            feature.setAttributes([object_id, float(props.get("score", 0.0)), prompts, answer.get("model", self.model),
                                   props.get("phrase", phrase)])
            features.append(feature)
        return features

    def _show(self, object_id: int, count: int, answer: dict[str, Any]) -> None:
        self._replace(object_id, self._features(answer, object_id, True, count))

    def _replace(self, object_id: int, features: list[QgsFeature]) -> None:
        provider = self.output.dataProvider()
        old = [f.id() for f in self.output.getFeatures() if f["object_id"] == object_id]
        if old:
            provider.deleteFeatures(old)
        if features:
            provider.addFeatures(features)
        self.output.updateExtents()
        self.output.triggerRepaint()

    def find(self, phrase: str, view: QgsRectangle) -> None:
        """Search ``view`` (layer CRS; the canvas's extent) for objects named by ``phrase``; each match becomes an
        object of its own in the output layer, with its phrase. Needs a server with a detector (or a SAM 3 model)."""
        phrase = " ".join(phrase.split())
        if not phrase:
            self.failed.emit("type a word or short phrase to find, e.g. crater")
            return
        view = view.intersect(self.layer.extent())
        if view.isEmpty():
            self.failed.emit("the view does not show the raster; pan to the imagery first")
            return
        view = self._capped(view.center().x(), view.center().y(), view.width(), view.height())
        if self.busy:
            self.failed.emit("wait for the answer in progress, then search again")
            return
        self.busy = True
        self.requests += 1
        self.status.emit(f"searching the view for {phrase!r}...")
        relay, started = self._relay, time.monotonic()

        def work() -> None:
            try:
                payload = request_body([{"type": "text", "data": phrase}], view, self._connect())
                relay.found.emit((phrase, self.server.segment(payload), time.monotonic() - started))
            except (ServiceError, geo.CrsError, OSError, ValueError, KeyError) as exc:
                relay.found.emit((phrase, exc, time.monotonic() - started))

        threading.Thread(target=work, daemon=True).start()

    def _take_found(self, phrase: str, answer: Any, seconds: float) -> None:
        self.busy = False
        if isinstance(answer, Exception):
            self.last_error = str(answer)
            self.failed.emit(str(answer))
            self.changed.emit()
            return
        self.last_answer, self.last_error = answer, None
        first = max(o.object_id for o in self.objects) + (1 if self.current.prompts else 0)
        first = max(first, self._last_id + 1)
        features = self._features(answer, first, False, 0, phrase)
        if features:
            self.output.dataProvider().addFeatures(features)
            self.output.updateExtents()
            self.output.triggerRepaint()
            self._last_id = first + len(features) - 1
            if not self.current.prompts:  # the next click starts after the found objects
                self.current.object_id = self._last_id + 1
        self.status.emit(f"found {len(features)} object(s) named {phrase!r} ({seconds:.1f} s)")
        self.changed.emit()

    def wait(self, timeout_s: float = 600.0) -> bool:
        """Process Qt events until no request is in flight (tests, scripts); True when idle in time."""
        end = time.monotonic() + timeout_s
        while (self.busy or self._pending) and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        QCoreApplication.processEvents()
        return not self.busy
