"""What crosses the wire: JSON bodies read and written, and the limit on a request body's size.

:func:`read_json` reads every request body (FastAPI's custom route class hook, :class:`JSONRoute`)
so a body Python cannot read at all is a 422 like any other invalid payload; :func:`json_bytes`
writes responses that hold numpy arrays; :class:`BodyLimit` stops large bodies before they are read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from samadapt.service.errors import UnreadableBody, error_response


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

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = error_response(413, f"the request body is larger than {self.max_bytes} bytes; send fewer prompts")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await error_response(400, "the Content-Length header is not a number")(scope, receive, send)
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

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
