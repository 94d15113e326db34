"""HTTP machinery shared by every backend client: one ``httpx.AsyncClient``, a concurrency limit
sized to the server, an ``asyncio-throttle`` rate limit, and retries with backoff and jitter.

Retried: connection errors, timeouts, 429 and 5xx (``Retry-After`` respected). Final: other 4xx,
turned into :class:`BackendRequestError` (or :class:`ContextOverflowError`, explained in words).
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from asyncio_throttle.throttler import Throttler
from httpx_aiohttp import AiohttpTransport
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
    r"longer than the (maximum )?model|too many tokens|prompt is too long|exceed_context",
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


def transport_failure(url: str, exc: httpx.TransportError) -> BackendUnavailable:
    """Name what went wrong on the wire. The aiohttp transport maps every aiohttp connection error
    to an httpx timeout; the aiohttp exception it chains says which it was."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError) or (
        cause is None and not isinstance(exc, httpx.TimeoutException)
    ):
        what = type(cause or exc).__name__
        return BackendUnavailable(f"{url}: cannot connect ({what}: {cause or exc})", url=url)
    return BackendUnavailable(f"{url}: timed out ({type(cause or exc).__name__})", url=url)


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


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (certifi's CAs, or SSL_CERT_FILE/DIR) for every client of the
    process: building one loads the CA bundle, ~30 ms of CPU."""
    return httpx.create_ssl_context()


class HttpClient:
    """A pooled, limited, retrying JSON client for one server base URL.

    The connections are aiohttp's (``httpx_aiohttp.AiohttpTransport`` under the httpx API):
    httpcore's own pool does work proportional to (connections × queued requests) on every request
    event, which at vLLM's 256 requests in flight cost ~10 ms of client CPU per request, against
    under 1 ms on aiohttp's connector (``benchmarks/http_pool.py``, docs/performance.md). Tests
    pass an httpx ``transport`` (a mock) instead."""

    def __init__(
        self,
        base_url: str,
        options: HttpOptions | None = None,
        *,
        backend_kind: str = "openai",
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.options = options or HttpOptions()
        self.backend_kind = backend_kind
        self._headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self._transport = transport
        self._http: httpx.AsyncClient | None = None  # built at the first request, inside the loop
        self._limit = asyncio.Semaphore(self.options.concurrency)
        self._throttle = Throttler(rate_limit=max(1, int(self.options.rate_per_s)), period=1.0)
        self._sleep = sleep

    def set_concurrency(self, value: int) -> None:
        """Resize the concurrency limit (before use: called once the server reports its capacity)."""
        self.options = self.options.model_copy(update={"concurrency": value})
        self._limit = asyncio.Semaphore(value)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            limits = httpx.Limits(
                max_connections=self.options.concurrency + 4,
                max_keepalive_connections=self.options.concurrency,
            )
            transport = self._transport or AiohttpTransport(limits=limits, verify=_tls_context())
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=httpx.Timeout(self.options.timeout_s, connect=self.options.connect_timeout_s),
                limits=limits,
                transport=transport,
            )
        return self._http

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
            response: httpx.Response | None = None
            try:
                async with self._limit, self._throttle:
                    started = time.perf_counter()
                    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
                    if timeout_s is not None:
                        kwargs["timeout"] = httpx.Timeout(timeout_s, connect=self.options.connect_timeout_s)
                    response = await self._client().request(method, path, **kwargs)
                    metrics.BACKEND_LATENCY.labels(self.backend_kind, label).observe(
                        time.perf_counter() - started
                    )
                if response.is_success:
                    if not response.content:
                        return None  # health endpoints (vLLM /health, Triton /v2/health/ready): no body
                    try:
                        return response.json()
                    except ValueError:
                        last = BackendServerError(f"{url} returned a body that is not JSON", url=url)
                else:
                    last = classify_status(response, url)
                    if not last.retryable:
                        metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
                        raise last
            except httpx.TransportError as exc:
                last = transport_failure(url, exc)
            metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
            if attempt + 1 < attempts:
                metrics.BACKEND_RETRIES.labels(self.backend_kind, last.kind).inc()
                delay = _retry_after(response)
                if delay is None:
                    cap = min(self.options.backoff_cap_s, self.options.backoff_s * (2**attempt))
                    delay = random.uniform(0, cap)
                await self._sleep(delay)
        assert last is not None
        if attempts > 1:
            last.args = (f"{last.args[0]} (after {attempts} attempts)",)
        raise last

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
