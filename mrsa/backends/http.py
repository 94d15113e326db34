"""HTTP machinery shared by every backend client, on top of a :class:`~mrsa.backends.wire.Wire`:
a concurrency limit sized to the server, an ``asyncio-throttle`` rate limit, and retries with
backoff and jitter.

Retried: connection errors, timeouts, 429 and 5xx (``Retry-After`` respected, up to a cap), and
malformed 2xx replies. Final: other 4xx, turned into :class:`BackendRequestError` (or
:class:`ContextOverflowError`, explained in words), and bodies over the size limit. Errors are
classified on the plain status and body bytes, by :func:`classify_status` or a server's own
classifier (Triton's).

Every attempt is bounded twice: a read timeout (the server is silent too long; the wire enforces
it) and a total deadline (a server that trickles bytes never trips the read timeout; enforced here,
whichever wire sends). Reply text is decoded safely: invalid UTF-8 and lone surrogates
(``"\\ud800"`` escapes) become U+FFFD, so they can be stored as JSON.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asyncio_throttle.throttler import Throttler
from pydantic import BaseModel, Field

from mrsa import telemetry
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
from mrsa.backends.wire import (
    AiohttpWire,
    BodyTooLarge,
    Wire,
    WireError,
    WireRequest,
    WireResponse,
    WireTimeout,
)

_CONTEXT_PATTERNS = re.compile(
    r"context (length|window|size)|maximum context|exceed(s|ed)? (the )?(available )?context|"
    r"longer than the (maximum )?model|too many tokens|prompt is too long|exceed_context|"
    r"greater than max_model_len",  # vLLM: max_tokens alone over the context
    re.IGNORECASE,
)


def context_overflow(message: str, url: str, status: int | None = None) -> ContextOverflowError | None:
    """The error for a server's ``message`` when it says the request does not fit the model's
    context window (in the words of vLLM, SGLang, llama.cpp, llama-cpp-python or Triton), else
    None; ``status`` None when the message came inside an HTTP 200."""
    if not _CONTEXT_PATTERNS.search(message):
        return None
    where = f"HTTP {status}: " if status is not None else ""
    return ContextOverflowError(
        f"{url}: the prompt plus the requested tokens do not fit the model's context window "
        f"({where}{message}). Lower budget/chunk, tail or subset, or serve a longer context.",
        url=url,
    )


HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
"""An HTTP header name: one RFC 9110 token (no spaces, colons or control characters)."""

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
    routing_header: str | None = Field(
        None,
        pattern=HEADER_NAME_PATTERN,
        description="Header that carries each generation's lineage key, for a router's affinity "
        "(consistent hashing, sessions); None = no header.",
    )

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


def error_text(body: bytes) -> str:
    """The message of an error reply (its ``error``/``detail``/``message``, else the body's text),
    at most 500 characters."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return body.decode("utf-8", "replace")[:500]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message", data)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:500]
    return str(data)[:500]


_BUSY_STATUSES = frozenset({429, 502, 503, 504})
"""Overloaded, loading or restarting (or the proxy in front says so): an outage, not a bad request."""

Classifier = Callable[[int, bytes, str], BackendError]
"""Reads a non-2xx reply (status, body, URL) as the right error type."""


def classify_status(status: int, body: bytes, url: str) -> BackendError:
    """A non-2xx reply of an OpenAI-compatible server as the right error type."""
    text = error_text(body)
    # A context overflow is final whatever the status: Triton's vLLM backend reports it as HTTP 500.
    overflow = context_overflow(text, url, status)
    if overflow is not None:
        return overflow
    if status in _BUSY_STATUSES:
        return BackendBusy(f"{url} answered HTTP {status}: {text}", url=url)
    if status >= 500:
        return BackendServerError(f"{url} answered HTTP {status}: {text}", url=url)
    return BackendRequestError(f"{url} rejected the request (HTTP {status}): {text}", url=url)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (the delta-seconds form)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _unavailable(url: str, exc: WireError) -> BackendUnavailable:
    if isinstance(exc, WireTimeout):
        return BackendUnavailable(f"{url}: timed out ({exc})", url=url)
    return BackendUnavailable(f"{url}: cannot connect ({exc})", url=url)


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


class HttpClient:
    """A pooled, limited, retrying JSON client for one server base URL.

    Every attempt goes out on one :class:`~mrsa.backends.wire.Wire`: an
    :class:`~mrsa.backends.wire.AiohttpWire` unless one is given (tests give a
    :class:`~mrsa.backends.wire.MockWire`), so retries, deadlines and error classification are the
    same code whatever sends. The client closes its wire."""

    def __init__(
        self,
        base_url: str,
        options: HttpOptions | None = None,
        *,
        backend_kind: str = "openai",
        wire: Wire | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        classify: Classifier = classify_status,
    ) -> None:
        self.base_url = base_url  # the server's root, normalised by the backend client that builds this
        self.options = options or HttpOptions()
        self.backend_kind = backend_kind
        auth = {"authorization": f"Bearer {self.options.api_key}"} if self.options.api_key else {}
        self._headers = auth
        self._json_headers = {**auth, "content-type": "application/json"}
        self._wire = wire  # None: an AiohttpWire, built at the first request (sized by then)
        self._limit = asyncio.Semaphore(self.options.concurrency)
        self._throttle = Throttler(rate_limit=max(1, int(self.options.rate_per_s)), period=1.0)
        self._sleep = sleep
        self._classify = classify  # a server's own reading of its error replies (Triton's 400s)

    def set_concurrency(self, value: int) -> None:
        """Resize the concurrency limit (before use: called once the server reports its capacity)."""
        self.options = self.options.model_copy(update={"concurrency": value})
        self._limit = asyncio.Semaphore(value)

    def _the_wire(self) -> Wire:
        if self._wire is None:
            tls = self.base_url.startswith("https:")
            self._wire = AiohttpWire(self.options.concurrency + 4, tls=tls)
        return self._wire

    async def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout_s: float,
        deadline_s: float | None = None,
        lineage: str | None = None,
    ) -> WireResponse:
        """One HTTP exchange, bounded by the read timeout and the total deadline; raises
        :class:`BackendUnavailable` for wire failures, :class:`ReplyTooLargeError` for a body over
        the limit."""
        url = f"{self.base_url}{path}"
        deadline = deadline_s if deadline_s is not None else self.options.deadline_for(timeout_s)
        limit = self.options.max_body_bytes
        headers = self._headers if body is None else self._json_headers
        if lineage is not None and self.options.routing_header:
            headers = {**headers, self.options.routing_header: lineage}
        request = WireRequest(
            method,
            url,
            headers,
            None if body is None else json.dumps(body, separators=(",", ":")).encode(),
            read_timeout_s=timeout_s,
            connect_timeout_s=self.options.connect_timeout_s,
            max_body_bytes=limit,
        )
        try:
            async with asyncio.timeout(deadline):
                return await self._the_wire().send(request)
        except TimeoutError as exc:  # the deadline (the wire reports its own timeouts as WireTimeout)
            raise BackendDeadlineExceeded(
                f"{url}: no complete reply within the {deadline:g}s deadline of one request "
                "(the server is sending too slowly)",
                url=url,
            ) from exc
        except WireError as exc:
            raise _unavailable(url, exc) from exc
        except BodyTooLarge as exc:
            raise _too_large(url, limit, exc.size) from exc

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
        lineage: str | None = None,
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (``None`` for an empty one),
        or what ``parse`` makes of it. ``parse`` raises :class:`MalformedReplyError` for a reply
        that breaks the protocol, or another :class:`BackendError` for an error the server
        reported inside a 2xx body; a retryable one is retried like a 5xx. ``timeout_s`` and
        ``deadline_s`` override the options' read timeout and the deadline it implies.
        ``lineage``: the request's lineage key (a candidate's, for generations), sent in the
        ``routing_header`` when one is configured, so a router keeps one candidate's requests on
        the replica that caches its prefix; every retry carries it too."""
        attempts = (self.options.max_retries if retries is None else retries) + 1
        url = f"{self.base_url}{path}"
        label = endpoint or path
        last: BackendError | None = None
        for attempt in range(attempts):
            reply: WireResponse | None = None
            try:
                async with self._limit, self._throttle:
                    started = time.perf_counter()
                    reply = await self._send(
                        method, path, body, timeout_s or self.options.timeout_s, deadline_s, lineage
                    )
                    telemetry.BACKEND_LATENCY.labels(self.backend_kind, label).observe(
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
                            telemetry.BACKEND_ERRORS.labels(self.backend_kind, exc.kind).inc()
                            raise
                        last = exc
                else:
                    last = self._classify(reply.status, reply.body, url)
                    if not last.retryable:
                        telemetry.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
                        raise last
            except BackendUnavailable as exc:
                last = exc
            except ReplyTooLargeError as exc:
                telemetry.BACKEND_ERRORS.labels(self.backend_kind, exc.kind).inc()
                raise
            telemetry.BACKEND_ERRORS.labels(self.backend_kind, last.kind).inc()
            if attempt + 1 < attempts:
                telemetry.BACKEND_RETRIES.labels(self.backend_kind, last.kind).inc()
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
        if self._wire is not None:
            await self._wire.aclose()
