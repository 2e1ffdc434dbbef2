"""The one table from exception to HTTP status, and the handlers that answer with it.

Every error leaves the service as JSON ``{"error": "<one sentence>"}`` (validation errors add
``detail``). :data:`STATUS_TABLE` is the only place a status is chosen for an exception: the
handlers installed by :func:`install_error_handlers` read it, and the API docs (``/docs``)
show it rendered by :func:`status_table_markdown`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from samadapt.errors import (
    CheckpointError,
    DiskFullError,
    DownloadError,
    InputError,
    InputFileError,
    MissingDependencyError,
    ModelNotFoundError,
    OutputExistsError,
    SamadaptError,
)
from samadapt.service.schemas import ErrorResponse
from samadapt.service.sources.base import FetchError

log = logging.getLogger("samadapt.service")


class UnreadableBody(HTTPException):
    """A request body that is not JSON Python can read at all; a 422 like any other invalid payload."""

    def __init__(self, reason: str) -> None:
        super().__init__(422, f"invalid request: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ErrorStatus:
    """One row of :data:`STATUS_TABLE`: errors of class ``error`` answer with ``status``."""

    error: type[Exception]
    status: int
    meaning: str


#: Exception class -> HTTP status, most specific first: the first row the error is an instance
#: of decides. 422 is for every body that is not a request the service can take, whether it fails
#: to parse or to validate; 400 for a well-formed request the service will not serve as asked.
STATUS_TABLE: tuple[ErrorStatus, ...] = (
    ErrorStatus(UnreadableBody, 422, "a body that cannot be read: not UTF-8, nested too deeply, a number of "
                                     "thousands of digits"),
    ErrorStatus(RequestValidationError, 422, "a body that is not a valid request: not JSON, a field missing or out "
                                             "of range, a coordinate that is NaN or infinite, no prompt, an unknown "
                                             "prompt type, an empty phrase, text mixed with points or rectangles"),
    ErrorStatus(FetchError, 502, "the imagery cannot be had: a tile server failed or was too slow (never a hang), "
                                 "or a local raster is damaged"),
    ErrorStatus(InputError, 400, "a valid request the service will not serve as asked: a bbox too large for the "
                                 "zoom or under 8 pixels a side, too many prompts, a prompt outside the bbox, an "
                                 "unknown source, a text prompt to a server without a detector or SAM 3"),
    ErrorStatus(InputFileError, 400, "an input file is missing or unreadable"),
    ErrorStatus(ModelNotFoundError, 404, "a model name or path that does not resolve to a checkpoint"),
    ErrorStatus(CheckpointError, 400, "a checkpoint of the wrong family, shape or format"),
    ErrorStatus(OutputExistsError, 409, "an output that exists and may not be overwritten"),
    ErrorStatus(DownloadError, 502, "a download the request needed failed or did not match its checksum"),
    ErrorStatus(MissingDependencyError, 501, "an optional dependency the request needs is not installed"),
    ErrorStatus(DiskFullError, 507, "too little free disk space for what the request would write"),
    ErrorStatus(SamadaptError, 500, "any other error samadapt raised on purpose"),
    ErrorStatus(Exception, 500, "anything else (the traceback goes to the server log only)"),
)


def error_status(exc: BaseException) -> int:
    """HTTP status of ``exc``: its row in :data:`STATUS_TABLE`, else an ``HTTPException``'s own status
    (401 wrong token, 404 unknown path), else 500."""
    for row in STATUS_TABLE:
        # The last row, Exception, documents the fallback; an HTTPException keeps its own status first.
        if row.error is not Exception and isinstance(exc, row.error):
            return row.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def status_table_markdown() -> str:
    """:data:`STATUS_TABLE` as a Markdown table (shown in the API docs)."""
    lines = ["| error | status | when |", "| --- | --- | --- |"]
    lines += [f"| `{row.error.__name__}` | {row.status} | {row.meaning} |" for row in STATUS_TABLE]
    return "\n".join(lines)


#: OpenAPI ``responses`` of an endpoint that takes a JSON body: every error status it may answer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in sorted({401, 413, *(row.status for row in STATUS_TABLE if row.status != 500)})
}


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    """The JSON every error leaves as: ``{"error": message, **extra}``."""
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


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for this class only
        return await _unexpected(request, exc)
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return error_response(error_status(exc), validation_message(detail), detail=detail)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, HTTPException):  # registered for this class only
        return await _unexpected(request, exc)
    if isinstance(exc, UnreadableBody):
        return error_response(error_status(exc), exc.detail,
                              detail=[{"loc": ["body"], "msg": exc.reason, "type": "json_invalid"}])
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"nothing here: {request.url.path}"
    response = error_response(error_status(exc), message)
    response.headers.update(exc.headers or {})
    return response


async def _samadapt(request: Request, exc: Exception) -> JSONResponse:
    status = error_status(exc)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(status, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return error_response(error_status(exc), f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` raises leave as ``{"error": ...}`` with its :data:`STATUS_TABLE` status."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(SamadaptError, _samadapt)
    app.add_exception_handler(Exception, _unexpected)
