"""The plugin object QGIS loads: a toolbar button for the dock and the Processing provider."""

from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from . import service

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class SamadaptPlugin:
    """Registers the dock and the Processing provider; on unload removes them and stops every server."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.action: QAction | None = None
        self.dock: Any = None
        self.provider: Any = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS's name
        from .processing_provider import SamadaptProvider

        if self.provider is None:
            self.provider = SamadaptProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS's name
        from .dock import SamadaptDock

        self.initProcessing()
        self.dock = SamadaptDock(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action = QAction(QIcon(ICON), "samadapt: segment on the canvas", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu("samadapt", self.action)
        app = QgsApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(service.stop_all)

    def unload(self) -> None:
        if self.dock is not None:
            self.dock.stop()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginRasterMenu("samadapt", self.action)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        app = QgsApplication.instance()
        if app is not None:
            try:
                app.aboutToQuit.disconnect(service.stop_all)
            except TypeError:
                pass
        service.stop_all()
