"""The samadapt dock: choose a raster, start prompting, undo, new object, save the layer."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsCoordinateTransform, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import settings
from .maptool import PromptMapTool
from .runner import SamadaptNotFound
from .session import PromptSession


class SamadaptDock(QDockWidget):
    """Interactive segmentation of the chosen raster layer (see the README's QGIS section)."""

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__("samadapt", parent)
        self.setObjectName("SamadaptDock")
        self.iface = iface
        self.session: PromptSession | None = None
        self.tool: PromptMapTool | None = None

        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.layer_box = QgsMapLayerComboBox()
        self.layer_box.setFilters(QgsMapLayerProxyModel.RasterLayer)
        form.addRow("Raster", self.layer_box)
        self.model_edit = QLineEdit(settings.get("model"))
        self.model_edit.setToolTip("Registry name (sam-vit-base, sam2.1-hiera-tiny, ...), model folder or .pth file")
        form.addRow("Model", self.model_edit)
        self.adapter_widget = QgsFileWidget()
        self.adapter_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.adapter_widget.setFilePath(settings.get("adapter"))
        self.adapter_widget.setToolTip("Optional adapter folder from samadapt train")
        form.addRow("Adapter", self.adapter_widget)
        self.detector_edit = QLineEdit(settings.get("detector"))
        self.detector_edit.setPlaceholderText("optional: grounding-dino-tiny, owlv2-base")
        self.detector_edit.setToolTip("Detector for Find (text prompts); SAM 3 models need none")
        form.addRow("Detector", self.detector_edit)
        self.exe_widget = QgsFileWidget()
        self.exe_widget.setFilePath(settings.get("executable"))
        self.exe_widget.setToolTip("The samadapt program; empty: samadapt found on PATH")
        form.addRow("samadapt", self.exe_widget)
        layout.addLayout(form)

        self.start_button = QPushButton("Start prompting")
        self.start_button.setCheckable(True)
        self.start_button.toggled.connect(self._toggle)
        layout.addWidget(self.start_button)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(lambda: self.session and self.session.undo())
        self.new_button = QPushButton("New object")
        self.new_button.clicked.connect(lambda: self.session and self.session.new_object())
        self.save_button = QPushButton("Save layer...")
        self.save_button.clicked.connect(self._save)
        for button in (self.undo_button, self.new_button, self.save_button):
            button.setEnabled(False)
            row.addWidget(button)
        layout.addLayout(row)
        find_row = QHBoxLayout()
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("find by name in the view, e.g. crater")
        self.find_edit.returnPressed.connect(self.find)
        self.find_button = QPushButton("Find")
        self.find_button.clicked.connect(self.find)
        self.find_button.setEnabled(False)
        find_row.addWidget(self.find_edit)
        find_row.addWidget(self.find_button)
        layout.addLayout(find_row)
        self.help = QLabel("Click: object. Shift-click: background. Drag: box. Ctrl+Z: undo. N: new object.")
        self.help.setWordWrap(True)
        layout.addWidget(self.help)
        self.status = QLabel("Choose a raster layer and press Start prompting.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setWidget(body)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Opening the dock proposes the active layer when it is a raster (and no session runs)."""
        active = self.iface.activeLayer() if hasattr(self.iface, "activeLayer") else None
        if self.session is None and isinstance(active, QgsRasterLayer):
            self.layer_box.setLayer(active)
        super().showEvent(event)

    # -- session ---------------------------------------------------------------------------------

    def _toggle(self, on: bool) -> None:
        if on:
            if not self.start():
                self.start_button.blockSignals(True)
                self.start_button.setChecked(False)
                self.start_button.blockSignals(False)
        else:
            self.stop()

    def start(self) -> bool:
        """Serve the chosen raster and activate the map tool; False (and a message) when it cannot start."""
        layer = self.layer_box.currentLayer()
        chosen = {"model": self.model_edit.text().strip(), "adapter": self.adapter_widget.filePath(),
                  "executable": self.exe_widget.filePath(), "detector": self.detector_edit.text().strip()}
        for name, value in chosen.items():
            settings.put(name, value)
        try:
            session = PromptSession(layer, model=settings.get("model"), executable=settings.get("executable"),
                                    adapter=settings.get("adapter"), device=settings.get("device"),
                                    detector=settings.get("detector"))
        except (SamadaptNotFound, ValueError) as exc:
            self.show_status(str(exc), error=True)
            return False
        self.stop()
        self.session = session
        session.status.connect(self.show_status)
        session.failed.connect(lambda message: self.show_status(message, error=True))
        QgsProject.instance().addMapLayer(session.output)
        session.start()
        canvas = self.iface.mapCanvas()
        self.tool = PromptMapTool(canvas, session)
        canvas.setMapTool(self.tool)
        for button in (self.undo_button, self.new_button, self.save_button, self.find_button):
            button.setEnabled(True)
        self.start_button.setText("Stop prompting")
        return True

    def stop(self) -> None:
        """Stop the server and the map tool; the output layer stays in the project."""
        if self.tool is not None:
            canvas = self.iface.mapCanvas()
            if canvas.mapTool() is self.tool:
                canvas.unsetMapTool(self.tool)
            self.tool.clear()
            self.tool = None
        if self.session is not None:
            self.session.stop()
            self.session = None
        for button in (self.undo_button, self.new_button, self.save_button, self.find_button):
            button.setEnabled(False)
        self.start_button.setText("Start prompting")

    def find(self) -> None:
        """Search the canvas's view for the typed phrase (one object per match)."""
        if self.session is None:
            self.show_status("press Start prompting first", error=True)
            return
        canvas = self.iface.mapCanvas()
        to_layer = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), self.session.layer.crs(),
                                          QgsProject.instance().transformContext())
        self.session.find(self.find_edit.text(), to_layer.transformBoundingBox(canvas.extent()))

    def _save(self) -> None:
        if self.session is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save samadapt objects", "", "GeoPackage (*.gpkg)")
        if path:
            self.save(path)

    def save(self, path: str) -> str | None:
        """Save the output layer to ``path`` (GeoPackage); the path written, or None after an error message."""
        if self.session is None:
            return None
        try:
            written = self.session.save(path)
        except OSError as exc:
            self.show_status(str(exc), error=True)
            return None
        self.show_status(f"saved {self.session.output.featureCount()} polygon(s) to {written}")
        return written

    def show_status(self, message: str, error: bool = False) -> None:
        """Show ``message`` in the dock (red for errors)."""
        self.status.setText(message)
        self.status.setStyleSheet("color: #b00020;" if error else "")
