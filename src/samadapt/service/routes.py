"""The endpoints of the service, on one router; what they serve is read from ``app.state.served``.

Every endpoint but ``/health`` (and the page and static files, mounted by
:func:`samadapt.service.app.create_app`) requires the bearer token when the server has one.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from samadapt.models.loading import LoadedModel
from samadapt.service.errors import ERROR_RESPONSES, error_response
from samadapt.service.schemas import ErrorResponse, MapRequest, MapResponse, SegmentRequest, SegmentResponse
from samadapt.service.settings import ServiceSettings
from samadapt.service.sources import Source
from samadapt.service.text import TextPrompts
from samadapt.service.wire import GeoJSONResponse, JSONRoute

if TYPE_CHECKING:
    from samadapt.train.adapter import Adapter

#: Browsers may keep base-map tiles this long (seconds).
TILE_MAX_AGE = 3600


@dataclass(frozen=True)
class Served:
    """What one app serves, fixed when it is built.

    Attributes:
        settings: service settings (sources, limits, token, CORS, caching).
        loaded: the model, loaded once.
        model_name: how responses name the model.
        sources: the configured imagery sources by name.
        adapter: a loaded adapter (``samadapt.load_adapter``) enabling ``POST /map``, or None.
        adapter_name: how responses name the adapter; None without one.
        text: how text prompts are answered; None answers them only with a SAM 3 model.
    """

    settings: ServiceSettings
    loaded: LoadedModel
    model_name: str
    sources: dict[str, Source]
    adapter: Adapter | None = None
    adapter_name: str | None = None
    text: TextPrompts | None = None

    @property
    def text_prompts(self) -> bool:
        """True when this server answers text prompts (a SAM 3 model, or a detector)."""
        return (self.text or TextPrompts(self.loaded.family)).available

    @property
    def detector_name(self) -> str | None:
        """How responses name the detector; None without one."""
        return self.text.detector_name if self.text is not None else None


def served(request: Request) -> Served:
    """The :class:`Served` of the app handling ``request``."""
    found: Served = request.app.state.served
    return found


def bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; "" without one."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return given if scheme.lower() == "bearer" else ""


def check_token(request: Request) -> None:
    """Bearer token check, in constant time, when the server has a token."""
    expected = served(request).settings.token
    if expected is not None and not hmac.compare_digest(bearer(request).strip().encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token; send the header 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(route_class=JSONRoute)
auth = [Depends(check_token)]


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness: the model, adapter and detector in use, and whether text prompts are answered (open even when a
    token is set)."""
    s = served(request)
    return {"status": "ok", "model": s.model_name, "trusted": s.loaded.trusted, "adapter": s.adapter_name,
            "text_prompts": s.text_prompts, "detector": s.detector_name}


@router.get("/models", dependencies=auth)
async def models(request: Request) -> dict[str, Any]:
    """The model served, the adapter (if any) and the registry names."""
    from samadapt.models.registry import REGISTRY

    s = served(request)
    info = None
    if s.adapter is not None:
        info = {"name": s.adapter_name, "method": getattr(s.adapter, "config", {}).get("method"),
                "classes": {str(k): v for k, v in getattr(s.adapter, "classes", {}).items()}}
    return {
        "model": {"name": s.model_name, "family": s.loaded.family, "input_size": s.loaded.preprocessing.size,
                  "trusted": s.loaded.trusted},
        "adapter": info, "text_prompts": s.text_prompts, "detector": s.detector_name, "available": sorted(REGISTRY),
    }


@router.get("/sources", dependencies=auth)
async def list_sources(request: Request) -> dict[str, Any]:
    """The configured imagery sources; nothing else can be fetched."""
    s = served(request)
    return {"default": s.settings.default_source, "sources": [src.describe() for src in s.sources.values()]}


@router.get("/tiles/{source}/{z}/{x}/{y}.png", dependencies=auth, response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorResponse}})
async def tile(source: str, z: int, x: int, y: int, request: Request) -> Response:
    """One 256 px base-map tile of a configured source (web-mercator XYZ scheme of its body)."""
    found = served(request).sources.get(source)
    if found is None:
        return error_response(404, f"unknown source {source[:60]!r}; see /sources")
    png = await found.tile_png(z, x, y, request.app.state.engine.client)
    return Response(png, media_type="image/png", headers={"Cache-Control": f"public, max-age={TILE_MAX_AGE}"})


@router.post("/segment", dependencies=auth, response_class=GeoJSONResponse,
             responses={200: {"model": SegmentResponse}, **ERROR_RESPONSES})
async def segment(body: SegmentRequest, request: Request) -> GeoJSONResponse:
    """Segment the object(s) the prompts point at, or every match of text prompts in the view; GeoJSON in lng/lat
    of the source's body."""
    return GeoJSONResponse(await request.app.state.engine.segment(body))


@router.post("/map", dependencies=auth, response_class=GeoJSONResponse,
             responses={200: {"model": MapResponse}, 404: {"model": ErrorResponse}, **ERROR_RESPONSES})
async def map_view(body: MapRequest, request: Request) -> JSONResponse:
    """Class polygons of the whole view, predicted by the adapter the server was started with."""
    s = served(request)
    if s.adapter is None:
        return error_response(404, "this server was started without an adapter; restart it with --adapter <folder> "
                                   "to map classes")
    from samadapt.service.classes import map_classes

    return GeoJSONResponse(await map_classes(request.app.state.engine, s.adapter, s.adapter_name or "adapter", body))
