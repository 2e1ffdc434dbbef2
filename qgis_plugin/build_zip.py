"""Build the QGIS plugin's ZIP for "Plugins > Manage and Install Plugins > Install from ZIP".

    python3 qgis_plugin/build_zip.py dist/samadapt_qgis.zip

The archive holds one folder, ``samadapt_qgis/``, with ``metadata.txt`` and ``__init__.py`` at its
top, as QGIS's installer expects; caches are left out. Standard library only.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "samadapt_qgis"
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def build(out: Path) -> Path:
    """Write the ZIP to ``out`` (a temporary file renamed into place) and return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(PLUGIN):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                if name.endswith(SKIP_SUFFIXES):
                    continue
                path = Path(root) / name
                archive.write(path, Path(PLUGIN.name) / path.relative_to(PLUGIN))
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_zip.py OUT.zip")
    print(build(Path(sys.argv[1])))
