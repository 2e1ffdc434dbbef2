"""HTTP service: segment on a web map (SamGIS-compatible API, tile sources, browser page).

``samadapt serve --model M`` starts it; in Python, ``create_app(settings, segmenter)`` gives
the FastAPI application. Modules: ``settings`` (configuration), ``sources`` (XYZ tile servers
and local GeoTIFFs), ``schemas`` (request and response models), ``engine`` (embedding reuse,
decoding, vectorising), ``classes`` (``/map`` with an adapter), ``app`` (endpoints, errors,
limits). FastAPI is imported only when the app is built (``pip install 'samadapt[service]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from samadapt.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
