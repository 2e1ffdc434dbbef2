"""The plugin's settings, kept in QGIS's settings under ``samadapt/``."""

from __future__ import annotations

from qgis.core import QgsSettings

PREFIX = "samadapt/"
#: Setting name -> default.
DEFAULTS = {
    "executable": "",  # empty: samadapt on PATH
    "model": "sam-vit-base",
    "adapter": "",
    "device": "cpu",
    "detector": "",  # empty: no text prompts (unless the model is SAM 3)
}


def get(name: str) -> str:
    """The value of setting ``name`` (its default when unset)."""
    return str(QgsSettings().value(PREFIX + name, DEFAULTS[name], type=str) or DEFAULTS[name])


def put(name: str, value: str) -> None:
    """Store setting ``name``."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown samadapt setting {name!r}")
    QgsSettings().setValue(PREFIX + name, value)


def executable() -> str:
    """The samadapt executable to run (see :func:`samadapt_qgis.runner.find_executable`)."""
    from .runner import find_executable

    return find_executable(get("executable"))
