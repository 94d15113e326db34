"""The wire under every backend client: one HTTP exchange, bytes in and bytes out.

:class:`~mrsa.backends.http.HttpClient` does everything above the wire — retries, backoff,
deadlines, limits, JSON and error classification — and hands each attempt to a :class:`Wire`.
Production sends on :class:`AiohttpWire`; unit tests inject a :class:`MockWire` (a handler
function, as ``httpx.MockTransport`` is one), so a test of retries or error classification runs
exactly the code that runs in production, minus the socket.

The contract of :meth:`Wire.send`: return the reply (any status) with its whole body, or raise

- :class:`WireTimeout` when the server stayed silent longer than the request's connect or read
  timeout,
- :class:`WireError` when there was no reply (cannot connect, connection dropped),
- :class:`BodyTooLarge` when the body is over the request's ``max_body_bytes`` (stop reading).

The total deadline of an attempt is not the wire's business: the client cancels ``send`` when it
runs out, whichever wire it uses. Header names are lowercase on both sides (as HTTP/2 sends them;
HTTP/1.1 compares them case-insensitively).
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx


class WireError(Exception):
    """No reply: the connection could not be made or broke. The message names the cause
    (``ClientConnectorError: Cannot connect to host …``)."""


class WireTimeout(WireError):
    """The server was silent longer than the connect or read timeout. The message names which
    (``SocketTimeoutError``, ``ConnectionTimeoutError``)."""


class BodyTooLarge(Exception):
    """The reply body is over ``max_body_bytes``; ``size`` is its length when known (declared or
    read whole), None when reading stopped at the limit."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"reply body of {size if size is not None else 'more'} bytes")
        self.size = size


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@dataclass(frozen=True)
class WireRequest:
    """One HTTP request as the client sends it."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    read_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    max_body_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _lowercase(self.headers))

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    def json(self) -> Any:
        """The body decoded as JSON (None without a body): for mock handlers."""
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class WireResponse:
    """One HTTP reply: its status, headers and whole body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _lowercase(self.headers))

    @classmethod
    def of_json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None) -> WireResponse:
        """A reply whose body is ``data`` as JSON: for mock handlers."""
        return cls(status, {"content-type": "application/json", **(headers or {})}, json.dumps(data).encode())


class Wire(Protocol):
    """Sends one request and returns its reply (see the module docstring for the contract)."""

    async def send(self, request: WireRequest) -> WireResponse: ...

    async def aclose(self) -> None: ...


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (certifi's CAs, or SSL_CERT_FILE/DIR) for every client of the
    process: building one loads the CA bundle, ~30 ms of CPU."""
    return httpx.create_ssl_context()


class AiohttpWire:
    """The production wire: one aiohttp session (built at the first request, inside the running
    loop) with a pool of ``connections``.

    aiohttp, not httpx: httpx's connection pool does work proportional to (connections × queued
    requests) on every request event, which at vLLM's 256 requests in flight cost ~10 ms of client
    CPU per request, and httpx's request layer ~0.5 ms more than aiohttp's on any transport
    (``benchmarks/http_client.py``, docs/performance.md)."""

    def __init__(self, connections: int, *, tls: bool) -> None:
        self._connections = connections
        self._tls = tls  # verify certificates (an https server); plain http needs no context
        self._session: aiohttp.ClientSession | None = None

    async def send(self, request: WireRequest) -> WireResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, ssl=_tls_context() if self._tls else False
                )
            )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request.connect_timeout_s, sock_read=request.read_timeout_s
        )
        limit = request.max_body_bytes
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
            ) as reply:
                declared = reply.content_length
                if declared is not None and declared > limit:
                    raise BodyTooLarge(declared)
                data = bytearray()
                while chunk := await reply.content.readany():
                    data += chunk
                    if len(data) > limit:
                        raise BodyTooLarge(None)
                return WireResponse(reply.status, reply.headers, bytes(data))
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise WireTimeout(type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise WireError(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Handler = Callable[[WireRequest], WireResponse | Awaitable[WireResponse]]
"""A mock server: answers a request (sync or async), or raises :class:`WireError` /
:class:`WireTimeout` to fail it as the wire would."""


class MockWire:
    """A wire answered by a handler function, for unit tests (like ``httpx.MockTransport``).
    The body limit is applied to the handler's replies as the real wire applies it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def send(self, request: WireRequest) -> WireResponse:
        answer = self.handler(request)
        reply = answer if isinstance(answer, WireResponse) else await answer
        if len(reply.body) > request.max_body_bytes:
            raise BodyTooLarge(len(reply.body))
        return reply

    async def aclose(self) -> None:
        """Nothing to release (the same mock may serve several clients in turn)."""
