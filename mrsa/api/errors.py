"""Errors as JSON: every 4xx/5xx body is an :class:`~mrsa.api.schemas.ErrorResponse`.

Bad input is a 422 that names the field (``detail[].loc`` and the one-line ``message``); an
unreachable store is a 503 with ``Retry-After``; anything unexpected is logged with an id and
answered as a JSON 500 carrying that id — never a traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrsa.api.schemas import ErrorResponse, FieldError, OpenAIErrorDetail
from mrsa.store.base import StoreUnavailable

log = logging.getLogger("mrsa.api")

STORE_RETRY_AFTER_S = 5


class ApiError(Exception):
    """An error with an HTTP status and a one-line message (and, for 422, the fields)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        fields: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = list(fields)
        self.headers = headers or {}


def invalid(loc: Sequence[str | int], message: str, kind: str = "value_error") -> ApiError:
    """A 422 for one field; ``message`` should start with the field's name."""
    return ApiError(422, message, fields=[FieldError(loc=list(loc), msg=message, type=kind)])


def _loc_name(loc: Sequence[str | int]) -> str:
    """``('body', 'params', 'subset')`` → ``params.subset`` (the request part is implied)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def from_validation_errors(errors: Sequence[Any], prefix: Sequence[str | int] = ()) -> ApiError:
    """A 422 from pydantic/FastAPI error dicts; ``prefix`` is prepended to each location."""
    fields: list[FieldError] = []
    lines: list[str] = []
    for err in errors:
        loc = [*prefix, *(p for p in err.get("loc", ()) if p != "__root__")]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        # Cross-field rules (model validators) report no location (FastAPI: just the body) but start
        # with the field's name.
        head = msg.split(":", 1)[0]
        if (len(loc) == len(prefix) or loc == ["body"]) and head.isidentifier():
            loc.append(head)
        name = _loc_name(loc)
        fields.append(FieldError(loc=loc, msg=msg, type=str(err.get("type", "value_error"))))
        leaf = str(loc[-1]) if loc else ""
        lines.append(msg if leaf and msg.startswith(f"{leaf}:") else f"{name or 'body'}: {msg}")
    return ApiError(422, "; ".join(lines) or "invalid request", fields=fields)


OPENAI_PATHS = ("/v1/chat/completions",)
_OPENAI_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    404: ("not_found_error", None),
    409: ("conflict_error", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "too_many_jobs"),
    503: ("service_unavailable", None),
}


def openai_error(status: int, message: str, fields: Sequence[FieldError] = ()) -> OpenAIErrorDetail:
    kind, code = _OPENAI_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    param = _loc_name(fields[0].loc) if fields else None
    return OpenAIErrorDetail(message=message, type=kind, param=param or None, code=code)


def error_response(
    request: Request | None,
    status: int,
    message: str,
    fields: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
    error_id: str | None = None,
) -> JSONResponse:
    """An :class:`ErrorResponse`; on the OpenAI-compatible path it also carries OpenAI's ``error``
    object, so OpenAI SDKs show the message."""
    body = ErrorResponse(message=message, detail=list(fields), error_id=error_id)
    if request is not None and request.url.path in OPENAI_PATHS:
        body.error = openai_error(status, message, fields)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.message, exc.fields, exc.headers)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    err = from_validation_errors(exc.errors())
    return error_response(request, 422, err.message, err.fields)


MAX_JSON_DEPTH_NOTE = "request body: JSON nested too deeply to parse (a size limit of the API)"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # FastAPI turns any failure while it reads and parses the body into a 400 "error parsing the
    # body": give the real reason when it is one of the API's limits.
    cause = exc.__cause__
    if isinstance(cause, ApiError):  # the body-size limit, raised while the body was read
        return await _api_error(request, cause)
    if isinstance(cause, RecursionError):  # JSON nested deeper than the parser's recursion limit
        return error_response(request, 413, MAX_JSON_DEPTH_NOTE)
    return error_response(request, exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store unavailable: %s", exc)
    return error_response(
        request,
        503,
        "the job store is unavailable; retry shortly",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error("unexpected error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error (id {error_id}); it was logged", error_id=error_id)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)


# Documented on every route so clients (and schemathesis) know the error shape.
def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body could not be read (not UTF-8 JSON).",
        401: "Missing or invalid API key.",
        404: "No such job (or another key's job).",
        409: "The job is not in a state that allows this.",
        413: "The request body is too large (or its JSON nested too deeply).",
        422: "Invalid input; `detail[].loc` names the field.",
        429: "Too many jobs in flight (or event streams, or chat passthroughs, open) for this key; retry "
        "after `Retry-After` seconds.",
        503: "The job store is unavailable (or every event-stream or passthrough slot is taken); retry "
        "after `Retry-After` seconds.",
    }
    return {c: {"model": ErrorResponse, "description": text.get(c, "Error.")} for c in codes}
