"""HTTP machinery shared by every backend client: one aiohttp session, a concurrency limit sized to
the server, an ``asyncio-throttle`` rate limit, and retries with backoff and jitter.

Retried: connection errors, timeouts, 429 and 5xx (``Retry-After`` respected, up to a cap), and
malformed 2xx replies. Final: other 4xx, turned into :class:`BackendRequestError` (or
:class:`ContextOverflowError`, explained in words), and bodies over the size limit.

Every attempt is bounded twice: a read timeout (the server is silent too long) and a total deadline
(a server that trickles bytes never trips the read timeout). Reply text is decoded safely: invalid
UTF-8 and lone surrogates (``"\\ud800"`` escapes) become U+FFFD, so they can be stored as JSON.
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
    BackendBusy,
    BackendError,
    BackendRequestError,
    BackendServerError,
    BackendUnavailable,
    ContextOverflowError,
    MalformedReplyError,
    ReplyTooLargeError,
)

_CONTEXT_PATTERNS = re.compile(
    r"context (length|window|size)|maximum context|exceed(s|ed)? (the )?(available )?context|"
    r"longer than the (maximum )?model|too many tokens|prompt is too long|exceed_context|"
    r"greater than max_model_len",  # vLLM: max_tokens alone over the context
    re.IGNORECASE,
)


DEADLINE_FACTOR = 6.0
"""Without an explicit deadline, one attempt may take this many read timeouts in total (1 h at the
default 600 s: a 40,960-token ZAYA1 candidate at more than 11 tokens/s)."""


class BackendDeadlineExceeded(BackendUnavailable):
    """No complete reply within the total deadline (a server trickling its reply, or a generation
    longer than the deadline allows). Retried like a timeout, but not an outage: after the retries
    the job fails instead of being held."""

    outage = False
    kind = "deadline"


class HttpOptions(BaseModel):
    """Connection behaviour of one backend client."""

    timeout_s: float = Field(
        600.0, gt=0, description="Read timeout: longest silence of the server within one request."
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        description="Total time one attempt may take, seconds; None = 6 × the attempt's read timeout.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Time to establish a connection.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries after the first attempt.")
    backoff_s: float = Field(0.5, ge=0, description="First backoff; doubles per retry, with full jitter.")
    backoff_cap_s: float = Field(20.0, ge=0)
    min_tokens_per_s: float = Field(
        10.0,
        gt=0,
        description="Slowest decode a generation is allowed: one asking for max_tokens gets a read "
        "timeout and a deadline of at least max_tokens / this, seconds (a non-streaming server is "
        "silent until the generation is done).",
    )
    retry_after_cap_s: float = Field(
        60.0, ge=0, description="Longest wait a server's Retry-After header can ask for, seconds."
    )
    max_body_bytes: int = Field(
        64 * 2**20, ge=1024, description="Largest reply body read; a bigger one is a final error."
    )
    concurrency: int = Field(8, ge=1, le=4096, description="Requests in flight at once.")
    rate_per_s: float = Field(1000.0, gt=0, description="Requests started per second at most.")
    api_key: str | None = None

    def deadline_for(self, timeout_s: float) -> float:
        """The total deadline of one attempt whose read timeout is ``timeout_s``."""
        return self.deadline_s if self.deadline_s is not None else DEADLINE_FACTOR * timeout_s

    def generation_timeouts(self, max_tokens: int) -> tuple[float, float]:
        """(read timeout, deadline) of a generation of up to ``max_tokens`` tokens: room for the
        whole generation at ``min_tokens_per_s`` (a 40,960-token ZAYA1 candidate: 68 min), never
        less than the configured values; an explicit ``deadline_s`` stays a hard cap."""
        need = max_tokens / self.min_tokens_per_s
        read = max(self.timeout_s, need)
        deadline = (
            self.deadline_s if self.deadline_s is not None else max(DEADLINE_FACTOR * self.timeout_s, need)
        )
        return read, deadline


def backend_base_url(url: str) -> str:
    """A server's root URL from what a user gave: with or without the OpenAI SDK's ``/v1`` suffix
    and trailing slashes. Every backend path (``/v1/chat/completions``, ``/tokenize``,
    ``/v2/health/ready``…) is sent from the root, so ``http://h:8000/v1`` and ``http://h:8000``
    name the same server."""
    base = url.strip().rstrip("/")
    if base.lower().endswith("/v1"):
        base = base[:-3].rstrip("/")
    return base


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


_BUSY_STATUSES = frozenset({429, 502, 503, 504})
"""Overloaded, loading or restarting (or the proxy in front says so): an outage, not a bad request."""


def classify_status(response: httpx.Response, url: str) -> BackendError:
    """Turn a non-2xx response into the right error type."""
    text = _error_text(response)
    code = response.status_code
    # A context overflow is final whatever the status: Triton's vLLM backend reports it as HTTP 500.
    if code in _BUSY_STATUSES and not _CONTEXT_PATTERNS.search(text):
        return BackendBusy(f"{url} answered HTTP {code}: {text}", url=url)
    if code >= 500 and not _CONTEXT_PATTERNS.search(text):
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


def _unavailable(
    url: str, exc: Exception, *, timed_out: bool, deadline_s: float | None = None
) -> BackendUnavailable:
    """A wire failure in the same words whichever client (aiohttp, or httpx in tests) hit it;
    ``deadline_s`` when the attempt's total deadline (not the read timeout) ran out."""
    if deadline_s is not None:
        return BackendDeadlineExceeded(
            f"{url}: no complete reply within the {deadline_s:g}s deadline of one request "
            "(the server is sending too slowly)",
            url=url,
        )
    if timed_out:
        return BackendUnavailable(f"{url}: timed out ({type(exc).__name__})", url=url)
    return BackendUnavailable(f"{url}: cannot connect ({type(exc).__name__}: {exc})", url=url)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def decode_json(body: bytes, url: str) -> Any:
    """A reply body as JSON whose strings are always valid Unicode (storable, serialisable):
    invalid UTF-8 and lone surrogate escapes become U+FFFD. :class:`MalformedReplyError` when it
    is not JSON (or nested too deep to decode)."""
    try:
        data = json.loads(body.decode("utf-8-sig", "replace"))  # a leading BOM is dropped
        # json.loads turns a paired escape into one character, so a surrogate left is a lone one;
        # only a body with a ``\\uD…`` escape is walked (a memchr-speed test decides).
        return _scrub(data) if b"\\ud" in body or b"\\uD" in body else data
    except (ValueError, RecursionError) as exc:
        raise MalformedReplyError(
            f"{url} returned a body that is not JSON ({type(exc).__name__}): {body[:200]!r}", url=url
        ) from exc


def _too_large(url: str, limit: int, size: int | None = None) -> ReplyTooLargeError:
    seen = f"{size} bytes" if size is not None else "more"
    return ReplyTooLargeError(
        f"{url} sent a reply body of {seen}, over the limit of {limit} bytes (max_body_bytes)", url=url
    )


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
        self.base_url = backend_base_url(base_url)
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

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout_s: float,
        deadline_s: float | None = None,
    ) -> _Reply:
        """One HTTP exchange, bounded by the read timeout and the total deadline; raises
        :class:`BackendUnavailable` for wire failures, :class:`ReplyTooLargeError` for a body over
        the limit."""
        url = f"{self.base_url}{path}"
        deadline = deadline_s if deadline_s is not None else self.options.deadline_for(timeout_s)
        limit = self.options.max_body_bytes
        started = time.monotonic()

        def ran_out() -> float | None:
            """The deadline when it is what stopped the attempt (else the read timeout did)."""
            return deadline if time.monotonic() - started >= deadline * 0.99 else None

        if self._transport is not None:
            if self._httpx is None:
                self._httpx = httpx.AsyncClient(
                    base_url=self.base_url, headers=self._headers, transport=self._transport
                )
            try:
                async with asyncio.timeout(deadline):
                    response = await self._httpx.request(
                        method,
                        path,
                        json=body,
                        timeout=httpx.Timeout(timeout_s, connect=self.options.connect_timeout_s),
                    )
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise _unavailable(url, exc, timed_out=True, deadline_s=ran_out()) from exc
            except httpx.TransportError as exc:
                raise _unavailable(url, exc, timed_out=False) from exc
            if len(response.content) > limit:
                raise _too_large(url, limit, len(response.content))
            return _Reply(response.status_code, response.headers, response.content)
        if self._session is None:
            tls = _tls_context() if self.base_url.startswith("https:") else False
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self.options.concurrency + 4, ssl=tls),
            )
        timeout = aiohttp.ClientTimeout(
            total=deadline, sock_connect=self.options.connect_timeout_s, sock_read=timeout_s
        )
        try:
            async with self._session.request(method, url, json=body, timeout=timeout) as reply:
                declared = reply.content_length
                if declared is not None and declared > limit:
                    raise _too_large(url, limit, declared)
                data = bytearray()
                while chunk := await reply.content.readany():
                    data += chunk
                    if len(data) > limit:
                        raise _too_large(url, limit)
                return _Reply(reply.status, reply.headers, bytes(data))
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise _unavailable(url, exc, timed_out=True, deadline_s=ran_out()) from exc
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
        deadline_s: float | None = None,
        endpoint: str | None = None,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (``None`` for an empty one),
        or what ``parse`` makes of it. ``parse`` raises :class:`MalformedReplyError` for a reply
        that breaks the protocol, or another :class:`BackendError` for an error the server
        reported inside a 2xx body; a retryable one is retried like a 5xx. ``timeout_s`` and
        ``deadline_s`` override the options' read timeout and the deadline it implies."""
        attempts = (self.options.max_retries if retries is None else retries) + 1
        url = f"{self.base_url}{path}"
        label = endpoint or path
        last: BackendError | None = None
        for attempt in range(attempts):
            reply: _Reply | None = None
            try:
                async with self._limit, self._throttle:
                    started = time.perf_counter()
                    reply = await self._send(
                        method, path, body, timeout_s or self.options.timeout_s, deadline_s
                    )
                    metrics.BACKEND_LATENCY.labels(self.backend_kind, label).observe(
                        time.perf_counter() - started
                    )
                if 200 <= reply.status < 300:
                    try:
                        # Health endpoints (vLLM /health, Triton /v2/health/ready) answer no body.
                        data = decode_json(reply.body, url) if reply.body else None
                        return parse(data) if parse is not None else data
                    except MalformedReplyError as exc:
                        last = exc
                    except BackendError as exc:  # a server's own error inside a 2xx body (Triton)
                        if not exc.retryable:
                            metrics.BACKEND_ERRORS.labels(self.backend_kind, exc.kind).inc()
                            raise
                        last = exc
                else:
                    last = self._classify(reply.as_response(), url)
                    if not last.retryable:
                        metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
                        raise last
            except BackendUnavailable as exc:
                last = exc
            except ReplyTooLargeError as exc:
                metrics.BACKEND_ERRORS.labels(self.backend_kind, exc.kind).inc()
                raise
            metrics.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
            if attempt + 1 < attempts:
                metrics.BACKEND_RETRIES.labels(self.backend_kind, last.kind).inc()
                delay = _retry_after(reply.headers.get("retry-after") if reply is not None else None)
                if delay is not None:
                    delay = min(delay, self.options.retry_after_cap_s)
                else:
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
