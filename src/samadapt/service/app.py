"""The FastAPI application: the model, the sources, limits, auth and CORS put together.

``create_app(settings, segmenter, adapter=None)`` builds the app; the model is loaded once
here, the HTTP client and worker pools live as long as the app (its lifespan). The endpoints
are in :mod:`samadapt.service.routes`, the body parsing and size limit in
:mod:`samadapt.service.wire`.

Every error leaves as JSON ``{"error": "<one sentence>"}`` (validation errors add ``detail``),
with the status :data:`samadapt.service.errors.STATUS_TABLE` gives its exception (the API docs
at ``/docs`` show that table). Besides those, the HTTP layer answers 401 for a missing or wrong
bearer token, 404 for an unknown path or ``/map`` without an adapter, and 413 for a body larger
than ``max_body_bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from samadapt import __version__
from samadapt.predict.segmenter import Segmenter
from samadapt.service.engine import SegmentEngine, display_name
from samadapt.service.errors import install_error_handlers, status_table_markdown
from samadapt.service.routes import Served, router
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import Source, build_sources
from samadapt.service.text import TextPrompts
from samadapt.service.wire import BodyLimit, JSONRoute

if TYPE_CHECKING:
    from samadapt.train.adapter import Adapter

STATIC_DIR = Path(__file__).with_name("static")

DESCRIPTION = "Segment Anything on a web map: SamGIS-compatible /segment, class maps with an adapter."


def _lifespan(settings: ServiceSettings, segmenter: Segmenter, sources: dict[str, Source],
              text: TextPrompts) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: one HTTP client and one :class:`SegmentEngine` (``app.state.engine``) while it runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.fetch_timeout_s)
        limits = httpx.Limits(max_connections=max(16, 2 * settings.tile_concurrency))
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": settings.user_agent},
                                     trust_env=False) as client:
            engine = SegmentEngine(segmenter, sources, settings, client, text)
            app.state.engine = engine
            try:
                yield
            finally:
                engine.close()

    return lifespan


async def page() -> Response:
    """The map page, or a pointer to the API docs when the page is not installed."""
    index = STATIC_DIR / "index.html"
    if index.is_file():
        return FileResponse(index, media_type="text/html")
    return HTMLResponse("<!doctype html><title>samadapt</title><p>The page is not installed; the API is at "
                        "<a href='/docs'>/docs</a>.</p>")


def _add_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for ``origins`` only, without credentials (the token travels in a header)."""
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type"], allow_credentials=False)


def create_app(settings: ServiceSettings, segmenter: Segmenter, adapter: Adapter | None = None, *,
               sources: dict[str, Source] | None = None, adapter_name: str | None = None,
               text: TextPrompts | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: service settings (sources, limits, token, CORS, caching).
        segmenter: the model; it is loaded here, once.
        adapter: a loaded adapter (``samadapt.load_adapter``) enabling ``POST /map``, or None.
        sources: sources by name; default ``build_sources(settings)``.
        adapter_name: how responses name the adapter (default: its folder name).
        text: how text prompts are answered (``open_text_prompts`` loads the detector); default: only
            a SAM 3 model answers them, any other model answers them with a 400.

    Returns:
        The FastAPI application; serve it with uvicorn (``samadapt serve`` does).
    """
    sources = sources if sources is not None else build_sources(settings)
    loaded = segmenter.loaded
    text = text if text is not None else TextPrompts(loaded.family)
    if adapter is not None and adapter_name is None:
        path = getattr(adapter, "path", None)
        adapter_name = Path(path).name if path else "adapter"

    app = FastAPI(title="samadapt map service", version=__version__,
                  lifespan=_lifespan(settings, segmenter, sources, text),
                  description=f"{DESCRIPTION}\n\nErrors and their HTTP status:\n\n{status_table_markdown()}")
    app.router.route_class = JSONRoute  # before any route is added
    app.state.settings = settings
    app.state.loaded = loaded
    app.state.sources = sources
    app.state.served = Served(settings=settings, loaded=loaded, model_name=display_name(loaded.name),
                              sources=sources, adapter=adapter, adapter_name=adapter_name, text=text)
    install_error_handlers(app)

    app.add_api_route("/", page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    app.include_router(router)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        _add_cors(app, settings.cors_origins)
    return app
