"""The FastAPI application: endpoints, limits, auth, CORS and one table of errors.

``create_app(settings, segmenter, adapter=None)`` builds the app; the model is loaded once
here, the HTTP client and worker pools live as long as the app (its lifespan). Every error
leaves as JSON ``{"error": "<one sentence>"}`` (validation errors add ``detail``):

======================================  ======
a body that is not a valid request       422
(not JSON, not UTF-8, nested too
deeply, failing pydantic validation)
InputError (bad bbox, prompts, source)   400
missing / wrong bearer token             401
unknown path, /map without an adapter    404
body larger than ``max_body_bytes``      413
FetchError (tile server failed or slow,  502
local raster damaged)
anything else                            500 (traceback in the server log only)
======================================  ======

422 is for every body that is not a request the service can take, whether it fails to parse
or to validate: the client sent something wrong and must change the body. 400 is for a
well-formed request the service will not serve as asked (too large a view, an unknown source).
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from samadapt import __version__
from samadapt.errors import InputError, InputFileError, SamadaptError
from samadapt.predict.segmenter import Segmenter
from samadapt.service.engine import SegmentEngine, display_name
from samadapt.service.schemas import (
    ErrorResponse,
    MapRequest,
    MapResponse,
    SegmentRequest,
    SegmentResponse,
)
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import FetchError, Source, build_sources

log = logging.getLogger("samadapt.service")

STATIC_DIR = Path(__file__).with_name("static")
#: Browsers may keep base-map tiles this long (seconds).
TILE_MAX_AGE = 3600

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 422, 502)}


def error_status(exc: SamadaptError) -> int:
    """HTTP status of an error samadapt raised on purpose (the table in the module docstring)."""
    if isinstance(exc, FetchError):
        return 502
    if isinstance(exc, (InputError, InputFileError)):
        return 400
    return 500


def _numpy_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def json_bytes(content: Any) -> bytes:
    """JSON of ``content``, numpy arrays included: orjson when installed (fast on large polygons)."""
    try:
        import orjson
    except ImportError:
        return json.dumps(content, default=_numpy_default, separators=(",", ":"), allow_nan=False).encode()
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class GeoJSONResponse(JSONResponse):
    """A JSON response whose content may hold numpy arrays (polygon rings)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One sentence out of pydantic's errors: where the first problem is and what it is."""
    if not errors:
        return "the request is not valid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        pos = [p for p in first.get("loc", ()) if isinstance(p, int)]
        return "invalid request: the body is not valid JSON" + (f" (error at character {pos[0]})" if pos else "")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) if loc else "the request body"
    msg = str(first.get("msg", "is not valid"))
    if len(msg) > 1 and msg[1].islower():
        msg = msg[0].lower() + msg[1:]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"invalid request: {where}: {msg}{more}"


class UnreadableBody(HTTPException):
    """A request body that is not JSON Python can read at all; a 422 like any other invalid payload."""

    def __init__(self, reason: str) -> None:
        super().__init__(422, f"invalid request: {reason}")
        self.reason = reason


def read_json(body: bytes) -> Any:
    """The JSON value of a request body, or :class:`UnreadableBody` with the reason in one sentence.

    Plain syntax errors stay ``json.JSONDecodeError``, which FastAPI answers with its 422
    ``json_invalid`` error; this adds the failures FastAPI would answer with a bare 400.
    """
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise UnreadableBody(f"the body is not UTF-8 text (byte 0x{bad:02x} at offset {exc.start}); "
                             "send JSON encoded as UTF-8") from None
    except RecursionError:  # the json module recurses once per level of nesting
        raise UnreadableBody("the body nests arrays or objects too deeply to read") from None
    except ValueError:  # the only other ValueError json raises: an integer too long to convert
        raise UnreadableBody(f"a number in the body has more than {sys.get_int_max_str_digits()} digits") from None


class _JSONRequest(Request):
    """A request whose ``json()`` is :func:`read_json`; FastAPI reads every JSON body through it."""

    async def json(self) -> Any:
        if not hasattr(self, "_read_json"):
            self._read_json = read_json(await self.body())
        return self._read_json


class JSONRoute(APIRoute):
    """A route whose request body is parsed by :func:`read_json` (FastAPI's custom route class hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def read_with_our_parser(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return read_with_our_parser


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413, by header and by bytes read.

    The body is read here (it is small by construction) and replayed to the app, so a
    client that lies about or omits ``Content-Length`` is still stopped at the limit.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = _error(413, f"the request body is larger than {self.max_bytes} bytes; send fewer prompts")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _error(400, "the Content-Length header is not a number")(scope, receive, send)
                return
            if declared > self.max_bytes:
                await too_big(scope, receive, send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_big(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(settings: ServiceSettings, segmenter: Segmenter, adapter: Any = None, *,
               sources: dict[str, Source] | None = None, adapter_name: str | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: service settings (sources, limits, token, CORS, caching).
        segmenter: the model; it is loaded here, once.
        adapter: a loaded adapter (``samadapt.load_adapter``) enabling ``POST /map``, or None.
        sources: sources by name; default ``build_sources(settings)``.
        adapter_name: how responses name the adapter (default: its folder name).

    Returns:
        The FastAPI application; serve it with uvicorn (``samadapt serve`` does).
    """
    sources = sources if sources is not None else build_sources(settings)
    loaded = segmenter.loaded
    model_name = display_name(loaded.name)
    if adapter is not None and adapter_name is None:
        path = getattr(adapter, "path", None)
        adapter_name = Path(path).name if path else "adapter"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.fetch_timeout_s)
        limits = httpx.Limits(max_connections=max(16, 2 * settings.tile_concurrency))
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": settings.user_agent},
                                     trust_env=False) as client:
            engine = SegmentEngine(segmenter, sources, settings, client)
            app.state.engine = engine
            try:
                yield
            finally:
                engine.close()

    app = FastAPI(
        title="samadapt map service", version=__version__, lifespan=lifespan,
        description="Segment Anything on a web map: SamGIS-compatible /segment, class maps with an adapter.",
    )
    app.router.route_class = JSONRoute  # before any route is added
    app.state.settings = settings
    app.state.loaded = loaded
    app.state.sources = sources

    def verify(given: str) -> None:
        expected = settings.token
        if expected is not None and not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong bearer token; send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def bearer(request: Request) -> str:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return given if scheme.lower() == "bearer" else ""

    def check_token(request: Request) -> None:
        """Bearer token check, in constant time, when the server has a token."""
        verify(bearer(request))

    auth = [Depends(check_token)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return _error(422, validation_message(detail), detail=detail)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, UnreadableBody):
            return _error(422, exc.detail, detail=[{"loc": ["body"], "msg": exc.reason, "type": "json_invalid"}])
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing here: {request.url.path}"
        response = _error(exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(SamadaptError)
    async def _samadapt(request: Request, exc: SamadaptError) -> JSONResponse:
        status = error_status(exc)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return _error(status, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return FileResponse(index, media_type="text/html")
        return HTMLResponse("<!doctype html><title>samadapt</title><p>The page is not installed; the API is at "
                            "<a href='/docs'>/docs</a>.</p>")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model and adapter in use (open even when a token is set)."""
        return {"status": "ok", "model": model_name, "trusted": loaded.trusted, "adapter": adapter_name}

    @app.get("/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        """The model served, the adapter (if any) and the registry names."""
        from samadapt.models.registry import REGISTRY

        info = None
        if adapter is not None:
            info = {"name": adapter_name, "method": getattr(adapter, "config", {}).get("method"),
                    "classes": {str(k): v for k, v in getattr(adapter, "classes", {}).items()}}
        return {
            "model": {"name": model_name, "family": loaded.family, "input_size": loaded.preprocessing.size,
                      "trusted": loaded.trusted},
            "adapter": info, "available": sorted(REGISTRY),
        }

    @app.get("/sources", dependencies=auth)
    async def list_sources() -> dict[str, Any]:
        """The configured imagery sources; nothing else can be fetched."""
        return {"default": settings.default_source, "sources": [s.describe() for s in sources.values()]}

    @app.get("/tiles/{source}/{z}/{x}/{y}.png", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorResponse}})
    async def tile(source: str, z: int, x: int, y: int, request: Request) -> Response:
        """One 256 px base-map tile of a configured source (web-mercator XYZ scheme of its body)."""
        found = sources.get(source)
        if found is None:
            return _error(404, f"unknown source {source[:60]!r}; see /sources")
        png = await found.tile_png(z, x, y, request.app.state.engine.client)
        return Response(png, media_type="image/png", headers={"Cache-Control": f"public, max-age={TILE_MAX_AGE}"})

    @app.post("/segment", dependencies=auth, response_class=GeoJSONResponse,
              responses={200: {"model": SegmentResponse}, **_ERRORS})
    async def segment(body: SegmentRequest, request: Request) -> GeoJSONResponse:
        """Segment the object(s) the prompts point at; GeoJSON in lng/lat of the source's body."""
        return GeoJSONResponse(await request.app.state.engine.segment(body))

    @app.post("/map", dependencies=auth, response_class=GeoJSONResponse,
              responses={200: {"model": MapResponse}, 404: {"model": ErrorResponse}, **_ERRORS})
    async def map_view(body: MapRequest, request: Request) -> JSONResponse:
        """Class polygons of the whole view, predicted by the adapter the server was started with."""
        if adapter is None:
            return _error(404, "this server was started without an adapter; restart it with --adapter <folder> "
                               "to map classes")
        from samadapt.service.classes import map_classes

        return GeoJSONResponse(await map_classes(request.app.state.engine, adapter, adapter_name or "adapter", body))

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    return app
