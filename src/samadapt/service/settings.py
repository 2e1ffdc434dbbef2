"""Settings of the HTTP service: imagery sources, limits, auth and caching.

Settings come from three layers, later ones winning: the defaults below, an optional TOML or
JSON file (``--config`` or ``SAMADAPT_SERVICE_CONFIG``), and environment variables
(``SAMADAPT_TOKEN``, ``SAMADAPT_CORS_ORIGINS``, ``SAMADAPT_SOURCES`` and
``SAMADAPT_SERVICE_<FIELD>`` for any scalar field, e.g. ``SAMADAPT_SERVICE_FETCH_TIMEOUT_S=5``).
Only the sources named here can ever be fetched: a request picks a source by name, never by URL.

A settings file looks like::

    default_source = "OpenStreetMap"
    fetch_timeout_s = 5

    [sources.hirise]
    type = "local"
    path = "ESP_012345_1234.tif"     # relative to the settings file

    [sources.MyTiles]
    type = "xyz"
    url = "https://tiles.example.org/{z}/{x}/{y}.png"
    max_zoom = 18
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from samadapt.errors import InputError, InputFileError

#: How embeddings are reused: per fixed grid cell of the model input, or per view.
EmbeddingMode = Literal["grid", "view"]

#: Public XYZ tile templates available without any configuration.
DEFAULT_SOURCES: dict[str, dict[str, Any]] = {
    "OpenStreetMap": {
        "type": "xyz",
        "url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
        "attribution": "© OpenStreetMap contributors",
        "min_zoom": 0,
        "max_zoom": 19,
    },
    "Esri.WorldImagery": {
        "type": "xyz",
        "url": "https://server.arcgisonline.com/ArcGIS/rest/services/World_Imagery/MapServer/tile/{z}/{y}/{x}",
        "attribution": "Tiles © Esri, Maxar, Earthstar Geographics and the GIS User Community",
        "min_zoom": 0,
        "max_zoom": 19,
    },
    "OpenTopoMap": {
        "type": "xyz",
        "url": "https://{s}.tile.opentopomap.org/{z}/{x}/{y}.png",
        "attribution": "© OpenStreetMap contributors, SRTM; style © OpenTopoMap (CC-BY-SA)",
        "min_zoom": 0,
        "max_zoom": 17,
        "subdomains": ["a", "b", "c"],
    },
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_XYZ_KEYS = {"type", "url", "attribution", "min_zoom", "max_zoom", "subdomains", "body", "crs"}
_LOCAL_KEYS = {"type", "path", "attribution", "min_zoom", "max_zoom"}
_TEMPLATE_VARS = {"{z}", "{x}", "{y}", "{s}"}


@dataclass
class ServiceSettings:
    """Everything the service needs besides the model.

    Attributes:
        sources: source name -> spec. An ``xyz`` spec has ``url`` (a template with ``{z}``,
            ``{x}``, ``{y}`` and optionally ``{s}``), ``attribution``, ``min_zoom``, ``max_zoom``,
            ``subdomains`` and, off Earth, ``body`` and ``crs``; a ``local`` spec has ``path`` to
            a GeoTIFF / COG.
        default_source: the source the page shows first.
        token: bearer token every API request must carry; None leaves the API open.
        cors_origins: origins allowed by CORS; empty turns CORS off.
        max_body_bytes: largest request body accepted.
        max_prompts: most prompts in one request.
        max_view_pixels: largest side, in frame pixels, of a requested view.
        embedding_mode: ``"grid"`` (embeddings per fixed grid cell) or ``"view"`` (per view).
        memory_embeddings: embeddings kept in memory (LRU).
        encoder_workers: threads running the image encoder.
        fetch_timeout_s: limit for fetching one tile, connection to last byte.
        tile_concurrency: tiles fetched at once per source.
        tile_cache_tiles: fetched tiles kept in memory per source (LRU).
        user_agent: User-Agent sent to tile servers (public servers require one).
        detector: text prompts on a model that cannot read text (all but SAM 3): a detector
            registry name (``grounding-dino-tiny``, ``owlv2-base``) or folder; None answers text
            prompts with a 400 unless the model is SAM 3.
        box_threshold: text prompts: minimum object score; None takes the detector's (or SAM 3's) default.
        text_threshold: text prompts with GroundingDINO: minimum score of the phrase's words; None for its default.
    """

    sources: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SOURCES.items()})
    default_source: str = "OpenStreetMap"
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 64 * 1024
    max_prompts: int = 32
    max_view_pixels: int = 4096
    embedding_mode: EmbeddingMode = "grid"
    memory_embeddings: int = 64
    encoder_workers: int = 1
    fetch_timeout_s: float = 10.0
    tile_concurrency: int = 8
    tile_cache_tiles: int = 512
    user_agent: str = "samadapt/0.1 (segment-anything map service)"
    detector: str | None = None
    box_threshold: float | None = None
    text_threshold: float | None = None

    def __post_init__(self) -> None:
        self._check_text()
        for name in ("max_body_bytes", "max_prompts", "max_view_pixels", "memory_embeddings",
                     "encoder_workers", "tile_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"setting {name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.tile_cache_tiles, bool) or not isinstance(self.tile_cache_tiles, int) \
                or self.tile_cache_tiles < 0:
            raise InputError(f"setting tile_cache_tiles must be a whole number >= 0, got {self.tile_cache_tiles!r}")
        if isinstance(self.fetch_timeout_s, bool) or not isinstance(self.fetch_timeout_s, (int, float)) \
                or not 0 < self.fetch_timeout_s <= 300:
            raise InputError("setting fetch_timeout_s must be a number of seconds in (0, 300], "
                             f"got {self.fetch_timeout_s!r}")
        self.fetch_timeout_s = float(self.fetch_timeout_s)
        if self.embedding_mode not in ("grid", "view"):
            raise InputError(f"setting embedding_mode must be 'grid' or 'view', got {self.embedding_mode!r}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise InputError("setting token must be a non-empty string, or absent to leave the API open")
        if not isinstance(self.cors_origins, list) or not all(isinstance(o, str) and o for o in self.cors_origins):
            raise InputError("setting cors_origins must be a list of origins like 'https://example.org', "
                             f"got {self.cors_origins!r}")
        if not isinstance(self.sources, dict) or not self.sources:
            raise InputError("setting sources must name at least one imagery source")
        self.sources = {name: check_source(name, spec) for name, spec in self.sources.items()}
        if self.default_source not in self.sources:
            raise InputError(
                f"default_source {self.default_source!r} is not a configured source; "
                f"choose one of {sorted(self.sources)}"
            )

    def _check_text(self) -> None:
        """The text-prompt settings: a detector name or folder, thresholds between 0 and 1 (text from the
        environment is read as a number)."""
        if self.detector is not None and (not isinstance(self.detector, str) or not self.detector.strip()):
            raise InputError("setting detector must be a detector name such as 'grounding-dino-tiny' or a folder, "
                             "or absent")
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise InputError(f"setting {name} must be a number between 0 and 1, got {value!r}") from None
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value <= 1.0):
                raise InputError(f"setting {name} must be a number between 0 and 1, got {value!r}")
            setattr(self, name, None if value is None else float(value))


def check_source(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one source spec and return it with defaults filled in.

    Raises:
        InputError: naming the source and the bad key or value.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"source name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(spec, Mapping):
        raise InputError(f"source {name!r} must be a table of settings, got {type(spec).__name__}")
    kind = spec.get("type", "local" if "path" in spec else "xyz")
    if kind not in ("xyz", "local"):
        raise InputError(f"source {name!r} has type {kind!r}; use 'xyz' or 'local'")
    allowed = _XYZ_KEYS if kind == "xyz" else _LOCAL_KEYS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(f"source {name!r} has unknown key(s) {unknown}; a {kind} source takes {sorted(allowed)}")
    out: dict[str, Any] = dict(spec, type=kind)
    out.setdefault("attribution", "")
    if not isinstance(out["attribution"], str):
        raise InputError(f"source {name!r}: attribution must be text")
    if kind == "xyz":
        out["url"] = check_template(name, out.get("url"))
        out.setdefault("min_zoom", 0)
        out.setdefault("max_zoom", 19)
        subdomains = out.setdefault("subdomains", ["a", "b", "c"])
        if isinstance(subdomains, str):
            out["subdomains"] = subdomains = list(subdomains)
        if not isinstance(subdomains, list) or not subdomains or not all(isinstance(s, str) and s for s in subdomains):
            raise InputError(f"source {name!r}: subdomains must be a non-empty list of names, got {subdomains!r}")
        body = out.setdefault("body", "Earth")
        if not isinstance(body, str) or not body:
            raise InputError(f"source {name!r}: body must be a name like 'Earth' or 'Mars'")
        crs = out.setdefault("crs", "EPSG:4326" if body == "Earth" else None)
        if not isinstance(crs, str) or not crs:
            raise InputError(f"source {name!r} is on {body}: give its lat/lng crs, "
                             "e.g. crs = 'IAU_2015:49900' for Mars")
    else:
        path = out.get("path")
        if not isinstance(path, (str, Path)) or not str(path):
            raise InputError(f"source {name!r}: a local source needs path = '<file.tif>'")
        out["path"] = str(path)
        out.setdefault("min_zoom", 0)
        out.setdefault("max_zoom", 24)
    lo, hi = out["min_zoom"], out["max_zoom"]
    if not all(isinstance(z, int) and not isinstance(z, bool) for z in (lo, hi)) or not 0 <= lo <= hi <= 30:
        raise InputError(f"source {name!r}: need whole-number zooms 0 <= min_zoom <= max_zoom <= 30, "
                         f"got {lo!r}, {hi!r}")
    return out


def check_template(name: str, url: Any) -> str:
    """Check an XYZ URL template: http(s), with ``{z}``, ``{x}``, ``{y}`` and no other variable."""
    if not isinstance(url, str) or not re.match(r"^https?://([A-Za-z0-9.-]|\{s\})+(:\d+)?/", url):
        raise InputError(f"source {name!r}: url must be an http(s) template like "
                         f"'https://host/{{z}}/{{x}}/{{y}}.png', got {url!r}")
    missing = [v for v in ("{z}", "{x}", "{y}") if v not in url]
    if missing:
        raise InputError(f"source {name!r}: url template {url!r} lacks {', '.join(missing)}")
    unknown = sorted(set(re.findall(r"\{[^{}]*\}", url)) - _TEMPLATE_VARS)
    if unknown:
        raise InputError(f"source {name!r}: url template {url!r} has unknown variable(s) {unknown}; "
                         "use {z} {x} {y} {s}")
    return url


#: Local-source paths that are not files on this machine: URLs and GDAL virtual paths.
_REMOTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://|/vsi)")


def parse_source_option(text: str) -> tuple[str, dict[str, Any]]:
    """Parse a CLI ``--source`` value: ``NAME=path.tif`` or ``NAME=https://host/{z}/{x}/{y}.png``.

    Returns:
        (name, spec) with the spec validated; a local path is made absolute.

    Raises:
        InputError: when the text is not ``NAME=VALUE`` or the value is unusable.
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise InputError(f"--source takes NAME=file.tif or NAME=https://host/{{z}}/{{x}}/{{y}}.png, got {text!r}")
    if _REMOTE.match(value) and "{z}" not in value:  # a raster URL, /vsi* path or STAC item: read by window
        return name, check_source(name, {"type": "local", "path": value})
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        return name, check_source(name, {"type": "xyz", "url": value})
    path = Path(value).expanduser()
    if not path.is_file():
        raise InputFileError(f"--source {name}: no such raster file {value!r}")
    return name, check_source(name, {"type": "local", "path": str(path.resolve())})


def add_sources(settings: ServiceSettings, options: list[str]) -> ServiceSettings:
    """A copy of ``settings`` with the CLI ``--source`` values added (same name replaces)."""
    sources = dict(settings.sources)
    for text in options:
        name, spec = parse_source_option(text)
        sources[name] = spec
    return dataclasses.replace(settings, sources=sources)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputFileError(f"service settings file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):  # noqa: UP036 - requires-python allows 3.10, which has no tomllib
                import tomllib
            else:
                import tomli as tomllib
            with path.open("rb") as f:
                data = tomllib.load(f)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise InputError(f"service settings file {path.name!r} must end in .toml or .json")
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"service settings file {str(path)!r} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"service settings file {str(path)!r} must hold a table of settings at its top level")
    return data


def _env_value(name: str, text: str, kind: object) -> int | float | str:
    try:
        if kind is int or kind == "int":
            return int(text)
        if kind is float or kind == "float":
            return float(text)
    except ValueError:
        raise InputError(f"environment variable {name} must be a number, got {text!r}") from None
    return text


def load_settings(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Build the service settings from defaults, an optional file and the environment.

    Args:
        path: a ``.toml`` or ``.json`` settings file; None uses ``SAMADAPT_SERVICE_CONFIG``
            when set. Relative local-source paths in the file are relative to the file.
        environ: the environment to read (default ``os.environ``).

    Returns:
        Validated settings. Sources from the file and ``SAMADAPT_SOURCES`` (a JSON object)
        are added to the default ones, unless the file sets ``default_sources = false``.

    Raises:
        InputError: a value or the file's syntax is wrong (the message names it).
        InputFileError: the file does not exist.
    """
    env = os.environ if environ is None else environ
    path = path if path is not None else (env.get("SAMADAPT_SERVICE_CONFIG") or None)
    values: dict[str, Any] = {}
    sources: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_SOURCES.items()}
    fields = {f.name: f for f in dataclasses.fields(ServiceSettings)}
    if path is not None:
        path = Path(path).expanduser()
        data = _read_file(path)
        if not data.pop("default_sources", True):
            sources = {}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(f"{path.name}: unknown setting(s) {unknown}; known settings are {sorted(fields)} "
                             "and default_sources")
        file_sources = data.pop("sources", {})
        if not isinstance(file_sources, dict):
            raise InputError(f"{path.name}: sources must be a table of name -> source settings")
        for name, spec in file_sources.items():
            if isinstance(spec, dict) and isinstance(spec.get("path"), str) and not _REMOTE.match(spec["path"]):
                spec = dict(spec, path=str((path.parent / Path(spec["path"]).expanduser()).resolve()))
            sources[name] = spec
        detector = data.get("detector")
        if isinstance(detector, str) and (path.parent / Path(detector).expanduser()).is_dir():
            data["detector"] = str((path.parent / Path(detector).expanduser()).resolve())  # a folder next to the file
        values.update(data)
    if env.get("SAMADAPT_SOURCES"):
        try:
            extra = json.loads(env["SAMADAPT_SOURCES"])
        except ValueError as exc:
            raise InputError(f"SAMADAPT_SOURCES must be a JSON object of name -> source settings: {exc}") from None
        if not isinstance(extra, dict):
            raise InputError("SAMADAPT_SOURCES must be a JSON object of name -> source settings")
        sources.update(extra)
    for name, f in fields.items():
        key = f"SAMADAPT_SERVICE_{name.upper()}"
        if name not in ("sources", "cors_origins") and env.get(key):
            values[name] = _env_value(key, env[key], f.type)
    if env.get("SAMADAPT_TOKEN"):
        values["token"] = env["SAMADAPT_TOKEN"]
    if "SAMADAPT_CORS_ORIGINS" in env:
        values["cors_origins"] = [o.strip() for o in env["SAMADAPT_CORS_ORIGINS"].split(",") if o.strip()]
    try:
        return ServiceSettings(sources=sources, **values)
    except TypeError as exc:  # a field given a value of a shape the dataclass cannot take
        raise InputError(f"service settings are not valid: {exc}") from None
