"""Coordinate reference systems as callers hold them, turned into ``pyproj.CRS``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import pyproj
from pyproj.exceptions import CRSError

from samadapt.errors import InputError

if TYPE_CHECKING:
    from rasterio.crs import CRS as RasterioCRS

#: A CRS as callers hold it: a ``pyproj.CRS``, a ``rasterio.crs.CRS``, an authority string or
#: WKT / PROJ text ("EPSG:32616"), or an EPSG code; :func:`to_pyproj_crs` takes each.
CRSLike: TypeAlias = "pyproj.CRS | RasterioCRS | str | int"


def to_pyproj_crs(crs: Any) -> pyproj.CRS | None:
    """Turn a CRS given in any usual form into a ``pyproj.CRS``.

    Args:
        crs: None, a ``pyproj.CRS``, a ``rasterio.crs.CRS``, or anything
            ``pyproj.CRS.from_user_input`` accepts ("EPSG:32616", a WKT or PROJ string, an int).

    Returns:
        The CRS, or None when ``crs`` is None.

    Raises:
        InputError: ``crs`` is not a CRS pyproj understands.
    """
    if crs is None:
        return None
    try:
        return pyproj.CRS.from_user_input(crs)
    except CRSError as err:
        raise InputError(
            f"{str(crs)[:80]!r} is not a coordinate reference system; give e.g. 'EPSG:32616', a WKT or a PROJ string"
        ) from err
