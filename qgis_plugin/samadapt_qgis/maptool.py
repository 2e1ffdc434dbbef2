"""The prompting map tool: click (object), shift-click (background), drag (box).

Canvas coordinates are transformed to the raster layer's CRS before they reach the
:class:`~samadapt_qgis.session.PromptSession`; the prompts of the current object are drawn as
markers (green object, red background) and a dashed box. Keys: Ctrl+Z undo, N new object.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsCoordinateTransform, QgsPointXY, QgsProject, QgsRectangle, QgsWkbTypes
from qgis.gui import QgsMapTool, QgsRubberBand, QgsVertexMarker
from qgis.PyQt.QtCore import QPoint, Qt
from qgis.PyQt.QtGui import QColor

#: A press and release further apart than this (screen pixels) is a box, not a click.
DRAG_PIXELS = 6


class PromptMapTool(QgsMapTool):
    """Sends clicks and boxes on ``canvas`` to ``session`` (see the module docstring)."""

    def __init__(self, canvas: Any, session: Any) -> None:
        super().__init__(canvas)
        self.session = session
        self._press: QPoint | None = None
        self._press_map: QgsPointXY | None = None
        self._band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
        self._band.setColor(QColor(126, 224, 255, 60))
        self._band.setStrokeColor(QColor(126, 224, 255))
        self._band.setWidth(2)
        self._markers: list[QgsVertexMarker] = []
        self.setCursor(Qt.CrossCursor)
        session.changed.connect(self.redraw)

    # -- coordinates -----------------------------------------------------------------------------

    def _to_layer(self) -> QgsCoordinateTransform:
        return QgsCoordinateTransform(self.canvas().mapSettings().destinationCrs(), self.session.layer.crs(),
                                      QgsProject.instance().transformContext())

    def _from_layer(self) -> QgsCoordinateTransform:
        return QgsCoordinateTransform(self.session.layer.crs(), self.canvas().mapSettings().destinationCrs(),
                                      QgsProject.instance().transformContext())

    # -- events ----------------------------------------------------------------------------------

    def canvasPressEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        if event.button() != Qt.LeftButton:
            return
        self._press = event.pos()
        self._press_map = event.mapPoint()

    def canvasMoveEvent(self, event: Any) -> None:  # noqa: N802
        if self._press is None or self._press_map is None:
            return
        if (event.pos() - self._press).manhattanLength() < DRAG_PIXELS:
            return
        self._band.setToGeometry(_rect_geometry(QgsRectangle(self._press_map, event.mapPoint())), None)

    def canvasReleaseEvent(self, event: Any) -> None:  # noqa: N802
        if event.button() != Qt.LeftButton or self._press is None or self._press_map is None:
            return
        start, start_map = self._press, self._press_map
        self._press = self._press_map = None
        self._band.reset(QgsWkbTypes.PolygonGeometry)
        to_layer = self._to_layer()
        if (event.pos() - start).manhattanLength() >= DRAG_PIXELS:
            corners = [to_layer.transform(p) for p in (start_map, event.mapPoint(),
                                                       QgsPointXY(start_map.x(), event.mapPoint().y()),
                                                       QgsPointXY(event.mapPoint().x(), start_map.y()))]
            box = QgsRectangle(corners[0], corners[1])
            for c in corners[2:]:
                box.combineExtentWith(c)
            self.session.set_box(box)
        else:
            label = 0 if event.modifiers() & Qt.ShiftModifier else 1
            self.session.add_point(to_layer.transform(event.mapPoint()), label)

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802
        if event.key() == Qt.Key_Z and event.modifiers() & Qt.ControlModifier:
            self.session.undo()
        elif event.key() == Qt.Key_N:
            self.session.new_object()
        else:
            event.ignore()

    def deactivate(self) -> None:
        self._band.reset(QgsWkbTypes.PolygonGeometry)
        super().deactivate()

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Markers for the current object's prompts."""
        canvas = self.canvas()
        for marker in self._markers:
            canvas.scene().removeItem(marker)
        self._markers = []
        from_layer = self._from_layer()
        for prompt in self.session.current.prompts:
            marker = QgsVertexMarker(canvas)
            if prompt.kind == "point":
                marker.setCenter(from_layer.transform(prompt.point))
                marker.setIconType(QgsVertexMarker.ICON_CIRCLE if prompt.label else QgsVertexMarker.ICON_X)
                marker.setColor(QColor(40, 200, 80) if prompt.label else QColor(230, 60, 60))
            else:
                marker.setCenter(from_layer.transform(prompt.box.center()))
                marker.setIconType(QgsVertexMarker.ICON_BOX)
                marker.setColor(QColor(126, 224, 255))
            marker.setIconSize(12)
            marker.setPenWidth(3)
            self._markers.append(marker)

    def clear(self) -> None:
        """Remove the markers and the box (the tool is going away)."""
        for marker in self._markers:
            self.canvas().scene().removeItem(marker)
        self._markers = []
        self._band.reset(QgsWkbTypes.PolygonGeometry)
        try:
            self.session.changed.disconnect(self.redraw)
        except TypeError:
            pass


def _rect_geometry(rect: QgsRectangle) -> Any:
    from qgis.core import QgsGeometry

    return QgsGeometry.fromRect(rect)
