"""HTTP machinery shared by every backend client: one ``httpx.AsyncClient``, a concurrency limit
sized to the server, an ``asyncio-throttle`` rate limit, and retries with backoff and jitter.

Retried: connection errors, timeouts, 429 and 5xx (``Retry-After`` respected). Final: other 4xx,
turned into :class:`BackendRequestError` (or :class:`ContextOverflowError`, explained in words).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from asyncio_throttle.throttler import Throttler
from pydantic import BaseModel, Field

from mrsa import metrics
from mrsa.backends.base import (
    BackendError,
    BackendRequestError,
    BackendServerError,
    BackendUnavailable,
    ContextOverflowError,
)

_CONTEXT_PATTERNS = re.compile(
    r"context (length|window|size)|maximum context|exceed(s|ed)? (the )?(available )?context|"
    r"longer than the (maximum )?model|too many tokens|prompt is too long|exceed_context|"
    r"greater than max_model_len",  # vLLM: max_tokens alone over the context
    re.IGNORECASE,
)


class HttpOptions(BaseModel):
    """Connection behaviour of one backend client."""

    timeout_s: float = Field(600.0, gt=0, description="Read timeout of one request (long generations).")
    connect_timeout_s: float = Field(5.0, gt=0, description="Time to establish a connection.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries after the first attempt.")
    backoff_s: float = Field(0.5, ge=0, description="First backoff; doubles per retry, with full jitter.")
    backoff_cap_s: float = Field(20.0, ge=0)
    concurrency: int = Field(8, ge=1, le=4096, description="Requests in flight at once.")
    rate_per_s: float = Field(1000.0, gt=0, description="Requests started per second at most.")
    api_key: str | None = None


def with_default_concurrency(options: HttpOptions | None, default: int) -> HttpOptions:
    """``options`` with the server's default concurrency unless the user set one explicitly."""
    if options is None:
        return HttpOptions(concurrency=default)
    if "concurrency" in options.model_fields_set:
        return options
    return options.model_copy(update={"concurrency": default})


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:500]
    return str(body)[:500]


def classify_status(response: httpx.Response, url: str) -> BackendError:
    """Turn a non-2xx response into the right error type."""
    text = _error_text(response)
    code = response.status_code
    # A context overflow is final whatever the status: Triton's vLLM backend reports it as HTTP 500.
    if code == 429 or (code >= 500 and not _CONTEXT_PATTERNS.search(text)):
        return BackendServerError(f"{url} answered HTTP {code}: {text}", url=url)
    if _CONTEXT_PATTERNS.search(text):
        return ContextOverflowError(
            f"{url}: the prompt plus the requested tokens do not fit the model's context window "
            f"(HTTP {code}: {text}). Lower budget/chunk, tail or subset, or serve a longer context.",
            url=url,
        )
    return BackendRequestError(f"{url} rejected the request (HTTP {code}): {text}", url=url)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _unavailable(url: str, exc: Exception, *, timed_out: bool) -> BackendUnavailable:
    """A wire failure in the same words whichever client (aiohttp, or httpx in tests) hit it."""
    if timed_out:
        return BackendUnavailable(f"{url}: timed out ({type(exc).__name__})", url=url)
    return BackendUnavailable(f"{url}: cannot connect ({type(exc).__name__}: {exc})", url=url)


@dataclass(frozen=True)
class _Reply:
    """An HTTP reply, whichever client fetched it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def as_response(self) -> httpx.Response:
        """For error classification, which reads the body as httpx does."""
        return httpx.Response(self.status, headers=dict(self.headers), content=self.body)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (certifi's CAs, or SSL_CERT_FILE/DIR) for every client of the
    process: building one loads the CA bundle, ~30 ms of CPU."""
    return httpx.create_ssl_context()


class HttpClient:
    """A pooled, limited, retrying JSON client for one server base URL.

    Requests go out on aiohttp: httpx's own connection pool does work proportional to
    (connections × queued requests) on every request event, which at vLLM's 256 requests in flight
    cost ~10 ms of client CPU per request, and httpx's request layer ~0.5 ms more than aiohttp's
    on any transport (``benchmarks/http_client.py``, docs/performance.md). Tests inject an httpx
    ``transport`` (a mock): those requests go through httpx, with the same retries and errors."""

    def __init__(
        self,
        base_url: str,
        options: HttpOptions | None = None,
        *,
        backend_kind: str = "openai",
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        classify: Callable[[httpx.Response, str], BackendError] = classify_status,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.options = options or HttpOptions()
        self.backend_kind = backend_kind
        self._headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self._transport = transport
        self._httpx: httpx.AsyncClient | None = None  # only with an injected transport
        self._session: aiohttp.ClientSession | None = None  # built at the first request, in the loop
        self._limit = asyncio.Semaphore(self.options.concurrency)
        self._throttle = Throttler(rate_limit=max(1, int(self.options.rate_per_s)), period=1.0)
        self._sleep = sleep
        self._classify = classify  # a server's own reading of its error replies (Triton's 400s)

    def set_concurrency(self, value: int) -> None:
        """Resize the concurrency limit (before use: called once the server reports its capacity)."""
        self.options = self.options.model_copy(update={"concurrency": value})
        self._limit = asyncio.Semaphore(value)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float) -> _Reply:
        """One HTTP exchange; raises :class:`BackendUnavailable` for wire failures."""
        url = f"{self.base_url}{path}"
        if self._transport is not None:
            if self._httpx is None:
                self._httpx = httpx.AsyncClient(
                    base_url=self.base_url, headers=self._headers, transport=self._transport
                )
            try:
                response = await self._httpx.request(
                    method,
                    path,
                    json=body,
                    timeout=httpx.Timeout(timeout_s, connect=self.options.connect_timeout_s),
                )
            except httpx.TimeoutException as exc:
                raise _unavailable(url, exc, timed_out=True) from exc
            except httpx.TransportError as exc:
                raise _unavailable(url, exc, timed_out=False) from exc
            return _Reply(response.status_code, response.headers, response.content)
        if self._session is None:
            tls = _tls_context() if self.base_url.startswith("https:") else False
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.options.concurrency + 4, ssl=tls),
            )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.options.connect_timeout_s, sock_read=timeout_s
        )
        try:
            async with self._session.request(method, url, json=body, timeout=timeout) as reply:
                return _Reply(reply.status, reply.headers, await reply.read())
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise _unavailable(url, exc, timed_out=True) from exc
        except aiohttp.ClientError as exc:
            raise _unavailable(url, exc, timed_out=False) from exc

    async def request_json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retries: int | None = None,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body."""
        attempts = (self.options.max_retries if retries is None else retries) + 1
        url = f"{self.base_url}{path}"
        label = endpoint or path
        last: BackendError | None = None
        for attempt in range(attempts):
            reply: _Reply | None = None
            try:
                async with self._limit, self._throttle:
                    started = time.perf_counter()
                    reply = await self._send(method, path, body, timeout_s or self.options.timeout_s)
                    metrics.BACKEND_LATENCY.labels(self.backend_kind, label).observe(
                        time.perf_counter() - started
                    )
                if 200 <= reply.status < 300:
                    if not reply.body:
                        return None  # health endpoints (vLLM /health, Triton /v2/health/ready): no body
                    try:
                        return json.loads(reply.body)
                    except ValueError:
                        last = BackendServerError(f"{url} returned a body that is not JSON", url=url)
                else:
                    last = self._classify(reply.as_response(), url)
                    if not last.retryable:
                        metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
                        raise last
            except BackendUnavailable as exc:
                last = exc
            metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
            if attempt + 1 < attempts:
                metrics.BACKEND_RETRIES.labels(self.backend_kind, last.kind).inc()
                delay = _retry_after(reply.headers.get("retry-after") if reply is not None else None)
                if delay is None:
                    cap = min(self.options.backoff_cap_s, self.options.backoff_s * (2**attempt))
                    delay = random.uniform(0, cap)
                await self._sleep(delay)
        assert last is not None
        if attempts > 1:
            last.args = (f"{last.args[0]} (after {attempts} attempts)",)
        raise last

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._httpx is not None:
            await self._httpx.aclose()
