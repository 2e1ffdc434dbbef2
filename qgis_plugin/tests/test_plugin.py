"""The plugin as QGIS loads it: from the ZIP "Install from ZIP" takes, started, used and unloaded.

QGIS's interface is stood in for by :class:`Iface` (a real main window and canvas, the calls the
plugin makes); the plugin machinery (``qgis.utils``) is QGIS's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from conftest import PLUGIN_ROOT


class Iface:
    """The part of QgisInterface the plugin uses, on a real main window with a map canvas."""

    def __init__(self) -> None:
        from qgis.gui import QgsMapCanvas
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.window.resize(1200, 720)
        self.canvas = QgsMapCanvas(self.window)
        self.window.setCentralWidget(self.canvas)
        self.toolbar: list = []
        self.menu: list = []
        self.active: Any = None

    def activeLayer(self) -> Any:  # noqa: N802
        return self.active

    def mainWindow(self) -> Any:  # noqa: N802 - QGIS's names
        return self.window

    def mapCanvas(self) -> Any:  # noqa: N802
        return self.canvas

    def addDockWidget(self, area: Any, dock: Any) -> None:  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock: Any) -> None:  # noqa: N802
        self.window.removeDockWidget(dock)

    def addToolBarIcon(self, action: Any) -> None:  # noqa: N802
        self.toolbar.append(action)

    def removeToolBarIcon(self, action: Any) -> None:  # noqa: N802
        self.toolbar.remove(action)

    def addPluginToRasterMenu(self, name: str, action: Any) -> None:  # noqa: N802
        self.menu.append((name, action))

    def removePluginRasterMenu(self, name: str, action: Any) -> None:  # noqa: N802
        self.menu.remove((name, action))

    def close(self) -> None:
        """Delete the window now, while QGIS is still up (Qt objects left to the interpreter's exit crash it)."""
        from qgis.PyQt import sip

        self.window.close()
        sip.delete(self.window)


def test_the_zip_has_one_plugin_folder_with_metadata(tmp_path: Path) -> None:
    sys.path.insert(0, str(PLUGIN_ROOT))
    from build_zip import build

    archive = build(tmp_path / "samadapt_qgis.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert {n.split("/")[0] for n in names} == {"samadapt_qgis"}
    assert {"samadapt_qgis/metadata.txt", "samadapt_qgis/__init__.py", "samadapt_qgis/icon.svg"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    meta = zipfile.ZipFile(archive).read("samadapt_qgis/metadata.txt").decode()
    for key in ("name=", "qgisMinimumVersion=", "description=", "version=", "author=", "email=",
                "hasProcessingProvider=yes"):
        assert key in meta


LOAD_SCRIPT = textwrap.dedent("""\
    import json, os, sys, time, zipfile
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    plugins, archive, raster, exe, model, iface_module, crash = sys.argv[1:8]
    zipfile.ZipFile(archive).extractall(plugins)  # what QGIS's Install from ZIP does
    sys.path.insert(0, plugins)
    sys.path.insert(0, os.path.dirname(iface_module))
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    app = QgsApplication([], True)
    app.initQgis()
    import qgis.utils
    from test_plugin import Iface
    qgis.utils.iface = Iface()
    qgis.utils.plugin_paths = [plugins]
    qgis.utils.updateAvailablePlugins()
    report = {"available": "samadapt_qgis" in qgis.utils.available_plugins,
              "name": qgis.utils.pluginMetadata("samadapt_qgis", "name")}
    assert qgis.utils.loadPlugin("samadapt_qgis") and qgis.utils.startPlugin("samadapt_qgis")
    plugin = qgis.utils.plugins["samadapt_qgis"]
    report["provider"] = QgsApplication.processingRegistry().providerById("samadapt") is not None
    provider = QgsApplication.processingRegistry().providerById("samadapt")
    report["algorithms"] = sorted(a.name() for a in provider.algorithms())
    from samadapt_qgis import settings
    settings.put("executable", exe)
    layer = QgsRasterLayer(raster, "mars")
    QgsProject.instance().addMapLayer(layer)
    dock = plugin.dock
    dock.layer_box.setLayer(layer)
    dock.model_edit.setText(model)
    dock.exe_widget.setFilePath(exe)
    dock.start_button.setChecked(True)
    server = dock.session.server
    server.wait_ready(300)
    report["pid"] = server.proc.pid
    report["running_before"] = server.running
    report["tool_active"] = qgis.utils.iface.mapCanvas().mapTool() is dock.tool
    if crash == "crash":  # QGIS dies without unloading anything
        print("REPORT " + json.dumps(report), flush=True)
        os._exit(1)
    assert qgis.utils.unloadPlugin("samadapt_qgis")
    report["running_after"] = server.running
    report["provider_after"] = QgsApplication.processingRegistry().providerById("samadapt") is not None
    report["toolbar_after"] = len(qgis.utils.iface.toolbar)
    print("REPORT " + json.dumps(report), flush=True)
    """)


def test_the_plugin_installs_from_its_zip_serves_and_unloads_without_leaving_a_server(
        qgis_app: Any, tmp_path: Path, rasters: dict[str, Path], samadapt_exe: str, tiny_sam: str) -> None:
    report = run_qgis(tmp_path, rasters, samadapt_exe, tiny_sam, "unload")
    assert report["available"] and report["name"] == "samadapt"
    assert report["provider"] and report["algorithms"] == ["annotate", "map", "segment", "train"]
    assert report["running_before"] and report["tool_active"]
    assert not report["running_after"] and not report["provider_after"] and report["toolbar_after"] == 0
    assert process_gone(report["pid"])  # the server process is gone, not merely detached


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def run_qgis(tmp_path: Path, rasters: dict[str, Path], exe: str, model: str, how: str) -> dict[str, Any]:
    """Run LOAD_SCRIPT in a QGIS of its own; its report."""
    sys.path.insert(0, str(PLUGIN_ROOT))
    from build_zip import build

    archive = build(tmp_path / "samadapt_qgis.zip")
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "plugins"), str(archive), str(rasters["mars"]),
                           exe, model, __file__, how], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_a_crashing_qgis_takes_its_server_with_it(qgis_app: Any, tmp_path: Path, rasters: dict[str, Path],
                                                 samadapt_exe: str, tiny_sam: str) -> None:
    from samadapt_qgis.runner import wait_until

    report = run_qgis(tmp_path, rasters, samadapt_exe, tiny_sam, "crash")
    assert report["running_before"]

    assert wait_until(lambda: process_gone(report["pid"]), 30), "the server outlived the QGIS that started it"


def test_the_dock_says_when_samadapt_is_missing(qgis_app: Any, rasters: dict[str, Path], tmp_path: Path) -> None:
    from qgis.core import QgsProject, QgsRasterLayer

    from samadapt_qgis import plugin as plugin_module
    from samadapt_qgis import settings

    iface = Iface()
    plugin = plugin_module.SamadaptPlugin(iface)
    plugin.initGui()
    try:
        layer = QgsRasterLayer(str(rasters["utm"]), "utm")
        QgsProject.instance().addMapLayer(layer)
        plugin.dock.layer_box.setLayer(layer)
        plugin.dock.exe_widget.setFilePath(str(tmp_path / "missing" / "samadapt"))
        plugin.dock.start_button.setChecked(True)
        assert not plugin.dock.start_button.isChecked() and plugin.dock.session is None
        assert "does not exist or cannot be run" in plugin.dock.status.text()
    finally:
        plugin.unload()
        iface.close()
        settings.put("executable", "")


def test_screenshot_of_the_dock_and_a_prompted_object(qgis_app: Any, rasters: dict[str, Path], box_exe: str,
                                                       tiny_sam: str, tmp_path: Path) -> None:
    """The README's picture: the dock beside the canvas after a click. ``SAMADAPT_SCREENSHOT=path`` keeps it."""
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.PyQt.QtGui import QImage
    from test_maptool import click, drag, layer_point, screen_of

    from samadapt_qgis import plugin as plugin_module

    iface = Iface()
    plugin = plugin_module.SamadaptPlugin(iface)
    plugin.initGui()
    try:
        other = QgsRasterLayer(str(rasters["utm"]), "utm")
        layer = QgsRasterLayer(str(rasters["mars"]), "mars (IAU_2015:49910)")
        QgsProject.instance().addMapLayers([other, layer])
        iface.active = layer
        dock = plugin.dock
        iface.window.show()
        plugin.action.trigger()  # the toolbar button opens the dock
        assert dock.isVisible()
        assert dock.layer_box.currentLayer() is layer  # the dock proposes the active raster
        canvas = iface.canvas
        canvas.setDestinationCrs(layer.crs())
        canvas.setLayers([layer])
        canvas.setExtent(layer.extent())
        dock.model_edit.setText(tiny_sam)
        dock.exe_widget.setFilePath(box_exe)
        dock.detector_edit.setText("bright")  # the stand-in detector of box_exe: "pit" finds the bright disc
        dock.start_button.setChecked(True)
        session = dock.session
        canvas.setLayers([session.output, layer])
        canvas.refresh()
        canvas.waitWhileRendering()
        click(canvas, screen_of(canvas, layer, layer_point(layer, 200.5, 260.5)))
        assert session.wait(300) and session.last_error is None, session.last_error
        assert "polygon" in dock.status.text()
        dock.new_button.click()  # object 2: a box dragged around the disc
        drag(canvas, screen_of(canvas, layer, layer_point(layer, 136, 196)),
             screen_of(canvas, layer, layer_point(layer, 264, 324)))
        assert session.wait(300) and session.last_error is None, session.last_error
        assert sorted(f["object_id"] for f in session.output.getFeatures()) == [1, 2]
        dock.find_edit.setText("pit")  # and by name, over the canvas's view
        dock.find_button.click()
        assert session.wait(300) and session.last_error is None, session.last_error
        assert [f["object_id"] for f in session.output.getFeatures() if f["phrase"] == "pit"] == [3]
        assert "found 1 object" in dock.status.text()
        canvas.refresh()
        canvas.waitWhileRendering()
        out = Path(os.environ.get("SAMADAPT_SCREENSHOT") or tmp_path / "qgis-plugin.png")
        assert iface.window.grab().save(str(out))
        image = QImage(str(out))
        assert image.width() >= 1000 and image.height() >= 600
    finally:
        plugin.unload()
        iface.close()
        settings_reset()


def settings_reset() -> None:
    from samadapt_qgis import settings

    for name in ("executable", "model", "adapter", "detector"):
        settings.put(name, settings.DEFAULTS[name])
