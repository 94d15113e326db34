"""A request-body size limit that answers with the API's JSON error (Starlette's own limit answers
in plain text). A declared ``Content-Length`` over the limit is refused before the body is read; a
body without one is counted as it arrives and refused once it passes the limit."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mrsa.api.errors import ApiError, error_response


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body: larger than the limit of {limit} bytes")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = _too_large(self.max_bytes)
            await error_response(None, err.status, err.message)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _too_large(self.max_bytes)  # raised inside the route: the handlers answer
            return message

        await self.app(scope, limited, send)
