"""The map tool against a real ``samadapt serve``: synthetic canvas events in, polygons where the user clicked.

The server is the real one with the tiny SAM; its mask decoder is the box decoder of the main
suite (see ``box_exe``), so a click must give a 24 px square centred on the click and a box must
give itself, in the raster layer's CRS, whatever the canvas's CRS and the layer's body.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def canvas(qgis_app: Any) -> Iterator[Any]:
    from qgis.gui import QgsMapCanvas

    c = QgsMapCanvas()
    c.resize(600, 600)
    c.show()
    yield c
    c.hide()
    c.deleteLater()


def show_layer(canvas: Any, path: Path, canvas_crs: str = "") -> Any:
    """Add the raster to the project and show all of it on the canvas (in ``canvas_crs``, else the layer's)."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    crs = QgsCoordinateReferenceSystem(canvas_crs) if canvas_crs else layer.crs()
    canvas.setDestinationCrs(crs)
    canvas.setLayers([layer])
    extent = QgsCoordinateTransform(layer.crs(), crs, QgsProject.instance()).transformBoundingBox(layer.extent())
    canvas.setExtent(extent)
    canvas.refresh()
    canvas.waitWhileRendering()
    return layer


def layer_point(layer: Any, col: float, row: float) -> Any:
    """The layer-CRS point of a pixel position (column, row) of the raster."""
    from qgis.core import QgsPointXY

    e = layer.extent()
    return QgsPointXY(e.xMinimum() + col * layer.rasterUnitsPerPixelX(),
                      e.yMaximum() - row * layer.rasterUnitsPerPixelY())


def screen_of(canvas: Any, layer: Any, point: Any) -> Any:
    """The canvas pixel where a layer-CRS point is drawn."""
    from qgis.core import QgsCoordinateTransform, QgsProject
    from qgis.PyQt.QtCore import QPoint

    map_point = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(),
                                       QgsProject.instance()).transform(point)
    px = canvas.getCoordinateTransform().transform(map_point)
    return QPoint(round(px.x()), round(px.y()))


def mouse(canvas: Any, kind: str, pos: Any, shift: bool = False) -> None:
    """Send one synthetic mouse event to the canvas's viewport (where QGIS's map tools listen)."""
    from qgis.PyQt.QtCore import QEvent, QPointF, Qt
    from qgis.PyQt.QtGui import QMouseEvent
    from qgis.PyQt.QtWidgets import QApplication

    types = {"press": QEvent.MouseButtonPress, "move": QEvent.MouseMove, "release": QEvent.MouseButtonRelease}
    buttons = Qt.NoButton if kind == "release" else Qt.LeftButton
    event = QMouseEvent(types[kind], QPointF(pos), Qt.LeftButton if kind != "move" else Qt.NoButton, buttons,
                        Qt.ShiftModifier if shift else Qt.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def click(canvas: Any, pos: Any, shift: bool = False) -> None:
    mouse(canvas, "press", pos, shift)
    mouse(canvas, "release", pos, shift)


def drag(canvas: Any, start: Any, end: Any) -> None:
    from qgis.PyQt.QtCore import QPoint

    mouse(canvas, "press", start)
    mouse(canvas, "move", QPoint((start.x() + end.x()) // 2, (start.y() + end.y()) // 2))
    mouse(canvas, "move", end)
    mouse(canvas, "release", end)


def features(session: Any) -> dict[int, Any]:
    return {f["object_id"]: f for f in session.output.getFeatures()}


@contextmanager
def prompting(canvas: Any, layer: Any, exe: str, model: str, detector: str = "") -> Iterator[Any]:
    """A session serving ``layer`` with its map tool on ``canvas``; the tool and the server go on exit.
    ``session.messages`` collects its status lines (failures prefixed "FAILED")."""
    from samadapt_qgis.maptool import PromptMapTool
    from samadapt_qgis.session import PromptSession

    session = PromptSession(layer, model=model, executable=exe, detector=detector)
    messages: list = []
    session.status.connect(messages.append)
    session.failed.connect(lambda m: messages.append("FAILED " + m))
    session.messages = messages
    session.start()
    tool = PromptMapTool(canvas, session)
    canvas.setMapTool(tool)
    try:
        yield session
    finally:
        tool.clear()
        session.stop()


@pytest.mark.parametrize(("name", "canvas_crs"), [("mars", ""), ("mars_proj", ""), ("moon", ""),
                                                  ("utm", "EPSG:3857")])
def test_a_click_gives_a_polygon_at_the_click_in_the_layers_crs(canvas: Any, rasters: dict[str, Path], box_exe: str,
                                                                  tiny_sam: str, name: str, canvas_crs: str) -> None:
    from qgis.core import QgsGeometry

    layer = show_layer(canvas, rasters[name], canvas_crs)
    with prompting(canvas, layer, box_exe, tiny_sam) as session:
        target = layer_point(layer, 200.5, 260.5)
        click(canvas, screen_of(canvas, layer, target))
        assert session.wait(300), "no answer from the server"
        assert session.last_error is None, session.last_error
        found = features(session)
        assert list(found) == [1]
        geom = found[1].geometry()
        assert session.output.crs() == layer.crs()
        assert geom.contains(QgsGeometry.fromPointXY(target)), geom.asWkt(1)
        # the box decoder's square: 24 px a side, centred on the click (within the canvas's pixel rounding)
        px = layer.rasterUnitsPerPixelX()
        centre = geom.centroid().asPoint()
        canvas_px = canvas.mapUnitsPerPixel() / px if not canvas_crs else 3.0
        assert math.hypot(centre.x() - target.x(), centre.y() - target.y()) <= (1.5 + canvas_px) * px
        assert 20 * 20 * px * px <= geom.area() <= 28 * 28 * px * px
        assert found[1]["score"] == pytest.approx(1.0, abs=1e-3)
        assert any("computing the image encoding" in m for m in session.messages)


def test_prompts_undo_new_object_and_save(canvas: Any, rasters: dict[str, Path], box_exe: str, tiny_sam: str,
                                          tmp_path: Path) -> None:
    from qgis.core import QgsVectorLayer

    layer = show_layer(canvas, rasters["mars"])
    with prompting(canvas, layer, box_exe, tiny_sam) as session:
        first = layer_point(layer, 100.5, 100.5)
        click(canvas, screen_of(canvas, layer, first))
        assert session.wait(300) and session.last_error is None, session.last_error
        one = features(session)[1].geometry()

        # shift-click: a background point joins the same object; the encoding of that area is reused
        click(canvas, screen_of(canvas, layer, layer_point(layer, 180.5, 180.5)), shift=True)
        assert session.wait(60) and session.last_error is None, session.last_error
        assert session.last_answer["cache_hit"] is True
        assert "reused" in session.messages[-1]
        assert [p.label for p in session.current.prompts] == [1, 0]

        # a box replaces nothing but becomes the object's box: the polygon is the box
        a, b = layer_point(layer, 60, 140), layer_point(layer, 150, 60)
        drag(canvas, screen_of(canvas, layer, a), screen_of(canvas, layer, b))
        assert session.wait(60) and session.last_error is None, session.last_error
        boxed = features(session)[1].geometry().boundingBox()
        px = layer.rasterUnitsPerPixelX()
        assert abs(boxed.width() - 90 * px) <= 4 * px and abs(boxed.height() - 80 * px) <= 4 * px
        assert [p.kind for p in session.current.prompts] == ["point", "point", "box"]

        # undo takes the box back: the click's square again
        session.undo()
        assert session.wait(60)
        assert features(session)[1].geometry().equals(one) or \
            features(session)[1].geometry().symDifference(one).area() < 1e-6 * one.area()

        # a new object keeps object 1 and numbers the next one 2
        session.new_object()
        click(canvas, screen_of(canvas, layer, layer_point(layer, 400.5, 400.5)))
        assert session.wait(300) and session.last_error is None, session.last_error
        assert sorted(features(session)) == [1, 2]

        # undo everything of object 2: its polygon goes, object 1 stays
        session.undo()
        assert session.wait(60)
        assert sorted(features(session)) == [1]

        saved = session.save(str(tmp_path / "objects"))
        assert saved.endswith("objects.gpkg")
        from osgeo import ogr

        dataset = ogr.Open(saved)  # kept: a layer outlives its dataset only as a crash
        written = dataset.GetLayer(0).GetSpatialRef()  # the file holds the layer's CRS
        assert written.GetAuthorityName(None) == "IAU" and written.GetAuthorityCode(None) == "49910"
        dataset = None
        reopened = QgsVectorLayer(saved, "saved", "ogr")
        assert reopened.isValid() and reopened.featureCount() == 1
        assert [f.name() for f in reopened.fields()][-5:] == ["object_id", "score", "prompts", "model", "phrase"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".samadapt-")]  # no temporary left


def test_a_click_outside_the_raster_is_refused_without_a_request(canvas: Any, rasters: dict[str, Path],
                                                                   box_exe: str, tiny_sam: str) -> None:
    layer = show_layer(canvas, rasters["utm"])
    with prompting(canvas, layer, box_exe, tiny_sam) as session:
        session.add_point(layer_point(layer, -50, 100))
        assert session.requests == 0
        assert "outside the raster" in session.messages[-1]


def test_a_server_that_cannot_start_says_why(canvas: Any, rasters: dict[str, Path], samadapt_exe: str,
                                             tmp_path: Path) -> None:
    layer = show_layer(canvas, rasters["utm"])
    with prompting(canvas, layer, samadapt_exe, str(tmp_path / "no-such-model")) as session:
        session.add_point(layer_point(layer, 100, 100))
        assert session.wait(120)
        assert session.last_error is not None and "samadapt serve stopped" in session.last_error
        assert "no-such-model" in session.last_error
        assert not session.server.running


def test_find_by_name_adds_each_match_with_its_phrase(canvas: Any, rasters: dict[str, Path], box_exe: str,
                                                      tiny_sam: str) -> None:
    """A text prompt over the view: the detector's box of the bright disc comes back as a polygon over the disc."""
    layer = show_layer(canvas, rasters["moon"])
    with prompting(canvas, layer, box_exe, tiny_sam, detector="bright") as session:
        click(canvas, screen_of(canvas, layer, layer_point(layer, 400.5, 100.5)))  # object 1, by a click
        assert session.wait(300) and session.last_error is None, session.last_error
        session.find("  pit ", canvas.extent())
        assert session.wait(120) and session.last_error is None, session.last_error
        found = [f for f in session.output.getFeatures() if f["phrase"] == "pit"]
        assert len(found) == 1 and found[0]["object_id"] == 2
        box = found[0].geometry().boundingBox()
        px = layer.rasterUnitsPerPixelX()
        # the disc (centre (200, 260), radius 60) covers pixel columns 141-259 and rows 201-319; the decoder's
        # low-resolution mask has cells of 4 pixels
        disc = layer_point(layer, 141, 201), layer_point(layer, 260, 320)
        assert abs(box.xMinimum() - disc[0].x()) <= 4 * px and abs(box.xMaximum() - disc[1].x()) <= 4 * px
        assert abs(box.yMaximum() - disc[0].y()) <= 4 * px and abs(box.yMinimum() - disc[1].y()) <= 4 * px
        assert "found 1 object" in session.messages[-1]
        # the next click is object 3: found objects keep their ids
        session.new_object()
        click(canvas, screen_of(canvas, layer, layer_point(layer, 450.5, 450.5)))
        assert session.wait(120) and session.last_error is None, session.last_error
        assert sorted(f["object_id"] for f in session.output.getFeatures()) == [1, 2, 3]


def test_find_without_a_detector_says_what_is_needed(canvas: Any, rasters: dict[str, Path], box_exe: str,
                                                     tiny_sam: str) -> None:
    layer = show_layer(canvas, rasters["utm"])
    with prompting(canvas, layer, box_exe, tiny_sam) as session:
        session.find("", canvas.extent())
        assert "type a word" in session.messages[-1] and session.requests == 0
        session.find("pit", canvas.extent())
        assert session.wait(300)
        assert session.last_error is not None and "detector" in session.last_error
        assert session.output.featureCount() == 0
