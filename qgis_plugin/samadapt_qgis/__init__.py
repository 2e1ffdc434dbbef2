"""samadapt for QGIS: interactive Segment Anything on the canvas and Processing algorithms.

The plugin drives the samadapt command-line tool and its local HTTP service (``samadapt
serve``), so QGIS's own Python needs neither torch nor samadapt.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS calls
    """The plugin object for QGIS's interface ``iface``."""
    from .plugin import SamadaptPlugin

    return SamadaptPlugin(iface)
