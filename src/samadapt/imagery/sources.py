"""One resolver for every raster source: local files, URLs, ``/vsi*`` paths and STAC items.

:func:`resolve_source` turns what a user typed into a :class:`RasterSource`: the path GDAL opens
(``gdal_path``), a local file name for outputs derived from it (``name``), and, for STAC items,
the CRS, transform and nodata the item declares. Every reader opens ``gdal_path`` inside
:func:`source_env`, so remote rasters are read by window (HTTP range requests), never downloaded
whole, and a slow server is bounded by a timeout.

Accepted sources:

* a local file (``scene.tif``, ``ESP_0123.cub``, ``label.xml`` of PDS4, ``.jp2``);
* ``https://`` / ``http://`` URLs, read through GDAL's ``/vsicurl/``;
* ``s3://bucket/key``, read through ``/vsis3/`` (credentials as GDAL reads them: ``AWS_*``);
* any GDAL virtual path (``/vsizip/archive.zip/scene.tif``, ``/vsicurl/...``, ``vrt://...``);
* a STAC item (a local ``.json`` file or a URL ending in ``.json``). Its asset is ``--asset KEY``,
  by default ``visual``, else the first asset whose media type is a GeoTIFF / COG
  (``image/tiff; application=geotiff[; profile=cloud-optimized]``). CRS and transform of the
  projection extension (``proj:code`` / ``proj:epsg`` / ``proj:wkt2`` / ``proj:projjson``,
  ``proj:transform``) and nodata of the raster extension (``raster:bands[0].nodata``, or the
  asset's ``nodata``) apply where the raster itself lacks them; the asset's fields win over
  the item's.

Timeouts: ``SAMADAPT_HTTP_TIMEOUT`` seconds for a whole request (default 30) and a tenth of it,
at least 1 s, to connect; they set GDAL's ``GDAL_HTTP_TIMEOUT`` and ``GDAL_HTTP_CONNECTTIMEOUT``,
which, when set in the environment, win over both.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from samadapt.errors import InputError, InputFileError

#: Seconds a whole HTTP request may take, unless SAMADAPT_HTTP_TIMEOUT says otherwise.
DEFAULT_HTTP_TIMEOUT_S = 30.0
_TIMEOUT_VAR = "SAMADAPT_HTTP_TIMEOUT"
_URL = re.compile(r"^(https?|s3)://", re.IGNORECASE)
_GEOTIFF = "image/tiff; application=geotiff"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RemoteSourceError(InputFileError):
    """A remote raster or STAC item cannot be had: the server refused, failed or was too slow."""


@dataclass(frozen=True)
class RasterSource:
    """A raster as GDAL opens it, with the local name its outputs take.

    Attributes:
        gdal_path: what ``rasterio.open`` gets (a local path, ``/vsicurl/https://...``, ``vrt://...``).
        name: a safe local file name for outputs and messages (``scene.tif``; a STAC item's id).
        text: the source as the user gave it.
        remote: True when reading goes over the network.
        local: the local file, when the source is one (else None).
    """

    gdal_path: str
    name: str
    text: str
    remote: bool = False
    local: Path | None = None

    @property
    def stem(self) -> str:
        """The name without its suffix, which names outputs (``scene`` of ``scene.tif``)."""
        return Path(self.name).stem or "raster"

    def __str__(self) -> str:
        return self.text


def http_timeout() -> float:
    """Seconds a whole HTTP request may take: ``SAMADAPT_HTTP_TIMEOUT``, else 30.

    Raises:
        InputError: the variable is not a positive number.
    """
    raw = os.environ.get(_TIMEOUT_VAR)
    if raw is None or not raw.strip():
        return DEFAULT_HTTP_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{_TIMEOUT_VAR} must be a positive number of seconds, got {raw!r}")
    return value


def _gdal_options(remote: bool) -> dict[str, Any]:
    timeout = http_timeout()
    options: dict[str, Any] = {
        "GDAL_HTTP_TIMEOUT": os.environ.get("GDAL_HTTP_TIMEOUT") or str(max(1, round(timeout))),
        "GDAL_HTTP_CONNECTTIMEOUT": os.environ.get("GDAL_HTTP_CONNECTTIMEOUT") or str(max(1, round(timeout / 10))),
        "GDAL_HTTP_MAX_RETRY": os.environ.get("GDAL_HTTP_MAX_RETRY") or "0",
    }
    if remote:  # no listing of the remote folder; local files keep their .aux.xml / .ovr siblings
        options["GDAL_DISABLE_READDIR_ON_OPEN"] = os.environ.get("GDAL_DISABLE_READDIR_ON_OPEN") or "EMPTY_DIR"
    return options


@contextmanager
def source_env(remote: bool = True) -> Iterator[None]:
    """GDAL settings for reading a source: HTTP timeouts and, for remote ones, no listing of their folder.

    Wrap both the opening of a raster and its reads in this (GDAL takes the HTTP settings when
    a remote file is opened). Nesting is fine.
    """
    with rasterio.Env(**_gdal_options(remote)):
        yield


def is_url(text: str) -> bool:
    """True for ``http://``, ``https://`` and ``s3://`` addresses."""
    return bool(_URL.match(text.strip()))


def is_remote_or_virtual(text: str) -> bool:
    """True for URLs and GDAL virtual paths, which are not globbed or looked up on disk."""
    text = text.strip()
    return is_url(text) or text.startswith("/vsi") or text.startswith("vrt://")


def safe_name(text: str, default: str = "raster") -> str:
    """A local file name from the last part of a URL or virtual path (``.../a%20b.tif?x=1`` -> ``a_b.tif``)."""
    path = urlsplit(text).path if is_url(text) else text.split("?", 1)[0]
    last = unquote(PurePosixPath(path).name) if path else ""
    name = _SAFE.sub("_", last).strip("._")
    return name or default


def _gdal_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "s3":
        return "/vsis3/" + url.split("://", 1)[1]
    return "/vsicurl/" + url


def resolve_source(text: str | os.PathLike[str] | RasterSource, asset: str | None = None) -> RasterSource:
    """Resolve what the user named as a raster into a :class:`RasterSource` (see the module docstring).

    Args:
        text: a path, URL, ``/vsi*`` path or STAC item (file or URL); a RasterSource is returned as it is.
        asset: the STAC asset key (``--asset``); only with a STAC item.

    Returns:
        The source, with ``gdal_path`` ready for ``rasterio.open`` inside :func:`source_env`.

    Raises:
        InputFileError: a local file that does not exist, or a folder.
        InputError: ``asset`` without a STAC item, or an asset the item does not have.
        RemoteSourceError: a STAC item that cannot be fetched or read.
    """
    if isinstance(text, RasterSource):
        if asset is not None:
            raise InputError("--asset picks an asset of a STAC item; give a STAC item (.json) as the source")
        return text
    raw = os.fspath(text)
    stripped = raw.strip()
    if _looks_like_stac(stripped):
        return _stac_source(stripped, asset)
    if asset is not None:
        raise InputError(f"--asset picks an asset of a STAC item, but {raw} is not a STAC item (.json); "
                         "drop --asset or give the item")
    if is_url(stripped):
        return RasterSource(_gdal_url(stripped), safe_name(stripped), raw, remote=True)
    if is_remote_or_virtual(stripped):
        inner = stripped.split("://", 1)[-1] if stripped.startswith("vrt://") else stripped
        remote = any(inner.startswith(f"/vsi{k}") for k in ("curl", "s3", "gs", "az", "adls", "oss", "swift",
                                                            "webhdfs", "http"))
        return RasterSource(stripped, safe_name(inner), raw, remote=remote)
    path = Path(raw)
    if not path.exists():
        raise InputFileError(f"image file not found: {path}")
    if path.is_dir():
        raise InputFileError(f"{path} is a folder, not an image file; give the path of one image or raster")
    return RasterSource(str(path), path.name, raw, local=path)


def _looks_like_stac(text: str) -> bool:
    path = urlsplit(text).path if is_url(text) else text
    if not path.lower().endswith(".json") or text.startswith("/vsi"):
        return False
    return is_url(text) or Path(text).is_file()


def _fetch_json(text: str) -> dict[str, Any]:
    """The JSON of a STAC item file or URL (with the HTTP timeout)."""
    try:
        if is_url(text):
            if text.lower().startswith("s3://"):
                raise InputError(f"{text}: give a STAC item on s3 by its https:// address")
            with urllib.request.urlopen(text, timeout=http_timeout()) as response:  # noqa: S310 - http(s) only
                body = response.read()
        else:
            body = Path(text).read_bytes()
        data = json.loads(body)
    except urllib.error.HTTPError as e:
        raise RemoteSourceError(f"cannot fetch the STAC item {text}: the server answered {e.code} {e.reason}") \
            from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise RemoteSourceError(f"cannot fetch the STAC item {text}: {reason}") from None
    except ValueError as e:
        raise InputFileError(f"{text} is not a STAC item: it is not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("type") != "Feature" or "assets" not in data:
        raise InputFileError(f"{text} is not a STAC item (a GeoJSON Feature with assets)")
    return data


def _stac_source(text: str, asset: str | None) -> RasterSource:
    import pystac

    data = _fetch_json(text)
    try:
        item = pystac.Item.from_dict(data, href=text if is_url(text) else str(Path(text).resolve()),
                                     preserve_dict=False)
    except Exception as e:  # pystac raises KeyError / ValueError / STACError on a bad item
        raise InputFileError(f"{text} is not a readable STAC item ({e})") from None
    key = asset if asset is not None else _default_asset(item)
    if key not in item.assets:
        keys = ", ".join(sorted(item.assets)) or "none"
        raise InputError(f"STAC item {item.id} has no asset {key!r}; its assets are {keys}")
    chosen = item.assets[key]
    href = chosen.get_absolute_href() or chosen.href
    inner = resolve_source(href)
    name = f"{safe_name(item.id, 'item')}{Path(inner.name).suffix or '.tif'}"
    fields = {**item.properties, **chosen.extra_fields}
    return _with_overrides(RasterSource(inner.gdal_path, name, text, remote=inner.remote, local=inner.local),
                           _stac_crs(fields), _stac_transform(fields), _stac_nodata(chosen.extra_fields, fields))


def _default_asset(item: Any) -> str:
    if "visual" in item.assets:
        return "visual"
    for key, a in item.assets.items():
        if (a.media_type or "").replace(" ", "").lower().startswith(_GEOTIFF.replace(" ", "")):
            return str(key)
    keys = ", ".join(sorted(item.assets)) or "none"
    raise InputError(f"STAC item {item.id} has no 'visual' asset and no GeoTIFF asset; pick one with --asset "
                     f"(its assets are {keys})")


def _stac_crs(fields: dict[str, Any]) -> CRS | None:
    try:
        for key in ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson"):
            value = fields.get(key)
            if value is None:
                continue
            if key == "proj:epsg":
                return CRS.from_epsg(int(value))
            if key == "proj:projjson":
                return CRS.from_user_input(json.dumps(value))
            return CRS.from_user_input(value)
    except (RasterioError, ValueError, TypeError) as e:
        raise InputError(f"the STAC item's projection is not a CRS rasterio understands ({e})") from None
    return None


def _stac_transform(fields: dict[str, Any]) -> Affine | None:
    value = fields.get("proj:transform")
    if not isinstance(value, list) or len(value) not in (6, 9):
        return None
    return Affine(*[float(v) for v in value[:6]])


def _stac_nodata(asset_fields: dict[str, Any], fields: dict[str, Any]) -> float | None:
    for bands in (asset_fields.get("raster:bands"), asset_fields.get("bands"), fields.get("raster:bands")):
        if isinstance(bands, list) and bands and isinstance(bands[0], dict) and bands[0].get("nodata") is not None:
            return float(bands[0]["nodata"])
    value = fields.get("nodata")
    return None if value is None else float(value)


def _with_overrides(source: RasterSource, crs: CRS | None, transform: Affine | None,
                    nodata: float | None) -> RasterSource:
    """The source wrapped in ``vrt://`` with what the item declares and the raster lacks."""
    if crs is None and transform is None and nodata is None:
        return source
    try:
        with source_env(source.remote), rasterio.open(source.gdal_path) as ds:
            has_crs, has_transform, has_nodata = bool(ds.crs), ds.transform != Affine.identity(), ds.nodata is not None
    except RasterioError as e:
        raise describe_open_error(source, e) from None
    options = []
    if crs is not None and not has_crs:
        options.append("a_srs=" + quote(crs.to_string(), safe=":"))
    if transform is not None and not has_transform:
        t = transform
        options.append(f"a_gt={t.c},{t.a},{t.b},{t.f},{t.d},{t.e}")
    if nodata is not None and not has_nodata:
        options.append(f"a_nodata={nodata:g}")
    if not options or "?" in source.gdal_path:
        return source
    return RasterSource(f"vrt://{source.gdal_path}?{'&'.join(options)}", source.name, source.text,
                        remote=source.remote, local=source.local)


def describe_open_error(source: RasterSource, exc: Exception) -> InputFileError:
    """One sentence for a raster that GDAL cannot open: HTTP status, timeout, or not a raster."""
    reason = str(exc).strip()
    if source.remote or is_url(source.text):
        code = re.search(r"HTTP (?:response )?code:?\s*(\d{3})", reason, re.IGNORECASE)
        if code:
            return RemoteSourceError(f"cannot read {source.text}: the server answered HTTP {code.group(1)}")
        if re.search(r"timed? ?out|timeout", reason, re.IGNORECASE):
            return RemoteSourceError(f"cannot read {source.text}: the server did not answer within "
                                     f"{http_timeout():g} s (set {_TIMEOUT_VAR} to wait longer)")
        if re.search(r"resolve|connect|refused|curl", reason, re.IGNORECASE):
            return RemoteSourceError(f"cannot read {source.text}: {reason.rstrip('.')}")
        if "does not exist" in reason or "No such file" in reason:
            return RemoteSourceError(f"cannot read {source.text}: the server has no such file")
    return InputFileError(f"{source.text} is not a readable image or raster ({reason})")


@contextmanager
def open_source(source: RasterSource) -> Iterator[rasterio.io.DatasetReader]:
    """Open a source inside :func:`source_env`; reads in the block share its settings.

    Raises:
        InputFileError: the raster cannot be opened (a :class:`RemoteSourceError` for network failures).
    """
    with source_env(source.remote):
        try:
            ds = rasterio.open(source.gdal_path)
        except RasterioError as e:
            raise describe_open_error(source, e) from None
        with ds:
            yield ds


def remote_read_error(path: str, exc: Exception) -> RemoteSourceError | None:
    """The one sentence for a failed read of a remote raster's pixels (HTTP status, timeout), else None."""
    text = path.split("://", 1)[-1] if path.startswith("vrt://") else path
    if not is_remote_or_virtual(path) or not text.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz")):
        return None
    url = text.split("?", 1)[0] if path.startswith("vrt://") else text
    url = url.removeprefix("/vsicurl/")
    error = describe_open_error(RasterSource(path, safe_name(url), url, remote=True), exc)
    return error if isinstance(error, RemoteSourceError) else None
