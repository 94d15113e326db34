"""``/metrics`` of the API: the shared metric objects of :mod:`mrsa.telemetry`, the queue gauges and
jobs by status read from the store at scrape time, and the API's own request metrics."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mrsa import telemetry
from mrsa.domain import JobStatus
from mrsa.store.base import Store

JOBS_BY_STATUS = Gauge(
    "mrsa_jobs",
    "Jobs in the store by status (all of them: finished ones until their retention ends), at scrape time.",
    ["status"],
)
JOBS_SUBMITTED = Counter("mrsa_api_jobs_submitted_total", "Jobs created through the API.", ["endpoint"])
API_REQUESTS = Counter("mrsa_api_requests_total", "HTTP requests answered.", ["method", "route", "status"])
API_LATENCY = Histogram(
    "mrsa_api_request_seconds",
    "Time to the response's first byte (streams: until their headers).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class StoreGauges:
    """Reads the store's job statuses and the queue's sizes, at most every ``cache_s`` seconds."""

    def __init__(self, store: Store, cache_s: float, reclaim_idle_ms: int | None) -> None:
        self.store = store
        self.cache_s = cache_s
        self.reclaim_idle_ms = reclaim_idle_ms
        self._at = float("-inf")

    async def refresh(self) -> None:
        if time.monotonic() - self._at < self.cache_s:
            return
        telemetry.observe_queue(await self.store.stats(self.reclaim_idle_ms))
        counts = await self.store.count_by_status()  # exact: an index the store keeps per status
        for status in JobStatus:
            JOBS_BY_STATUS.labels(status.value).set(counts.get(status, 0))
        self._at = time.monotonic()


def render() -> bytes:
    return generate_latest(REGISTRY)


class RequestMetrics:
    """ASGI middleware counting requests by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                API_LATENCY.labels(method, _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        method = method_label(scope["method"])
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            API_REQUESTS.labels(method, _route(scope), str(status)).inc()


# Label values are bounded: a client that makes up method names must not create new series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def method_label(method: str) -> str:
    """The method as a label value: one of :data:`KNOWN_METHODS`, else 'other'."""
    return method if method in KNOWN_METHODS else "other"


def _route(scope: Scope) -> str:
    """The matched route's template (bounded label values: never the raw path), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
