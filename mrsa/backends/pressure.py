"""Backpressure from a router's or inference server's Prometheus metrics.

Behind a router, a worker's own concurrency limit no longer says how busy the servers are: other
workers (and other clients) fill the same queue. Routers and servers publish that queue —
vLLM's ``vllm:num_requests_waiting``, SGLang's ``sglang:num_queue_reqs``, Triton's
``nv_inference_pending_request_count``, the Gateway API Inference Extension's
``inference_pool_average_queue_size`` — and :class:`BackendPressure` reads it every
``interval_s``: while it is above ``max_waiting`` the worker takes no new tasks, so they stay in
Redis for a worker whose servers have room, and the server's queue stays short.

It fails open: an endpoint that does not answer, answers an error, or sends garbage (not the
text format, NaN, negative or absurd values, a body over the size limit) is logged once and
counted, and the worker runs as if no metrics were configured until a good reading arrives.
A stuck endpoint must cost throughput control, never the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

from mrsa import telemetry
from mrsa.backends.wire import AiohttpWire, BodyTooLarge, Wire, WireError, WireRequest

log = logging.getLogger("mrsa.worker")

DEFAULT_WAITING_METRICS: tuple[str, ...] = (
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "nv_inference_pending_request_count",
    "inference_pool_average_queue_size",
)
MAX_METRICS_BYTES = 8 * 2**20
"""The largest metrics body read (vLLM's, with its histograms, is a few hundred kB)."""
_ABSURD = 1e12  # no real queue is this long: a value above it is garbage


def _sample_lines(text: str, names: Sequence[str]) -> str:
    """The sample lines of ``names`` only: the rest of a large exposition (histograms) is not
    parsed, and a malformed line elsewhere cannot spoil the reading."""
    keep: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        for name in names:
            if stripped.startswith(name) and stripped[len(name) : len(name) + 1] in ("{", " ", "\t"):
                keep.append(stripped)
                break
    return "\n".join(keep) + "\n"


def waiting_requests(text: str, names: Sequence[str] = DEFAULT_WAITING_METRICS) -> float | None:
    """The queue length in a Prometheus text exposition: the samples of the first of ``names``
    that has any valid one, summed (several engines or replicas each report their own series).
    ``None`` when none is present or the lines do not parse; samples that are not finite,
    negative or absurdly large are ignored."""
    try:
        families = list(text_string_to_metric_families(_sample_lines(text, names)))
    except Exception:  # the parser raises ValueError, IndexError, … on malformed lines
        return None
    values: dict[str, list[float]] = {}
    for family in families:
        for sample in family.samples:
            value = sample.value
            if isinstance(value, float | int) and math.isfinite(value) and 0 <= value < _ABSURD:
                values.setdefault(sample.name, []).append(float(value))
    for name in names:
        if name in values:
            return sum(values[name])
    return None


class BackendPressure:
    """Reads ``url`` every ``interval_s``; :attr:`holding` is True while the last good reading
    is above ``max_waiting`` and fresh: younger than a whole reading attempt (its timeout) plus
    the interval, and than three intervals, so a slow endpoint on a loaded machine does not flap
    the hold, and one that stops answering releases it. :attr:`opened` is set whenever the
    worker may take tasks again."""

    def __init__(
        self,
        url: str,
        *,
        max_waiting: int,
        names: Sequence[str] = DEFAULT_WAITING_METRICS,
        interval_s: float = 2.0,
        timeout_s: float = 5.0,
        wire: Wire | None = None,
    ) -> None:
        self.url = url
        self.max_waiting = max_waiting
        self.names = tuple(names)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._wire = wire or AiohttpWire(2, tls=url.startswith("https:"))
        self.waiting: float | None = None  # the last good reading
        self._read_at: float | None = None
        self._failing = False
        self.opened = asyncio.Event()
        self.opened.set()

    @property
    def fresh_s(self) -> float:
        """How long a reading holds: a full attempt (``2 × timeout_s`` at most) plus an interval."""
        return max(3 * self.interval_s, self.interval_s + 2 * self.timeout_s)

    @property
    def holding(self) -> bool:
        if self.waiting is None or self._read_at is None:
            return False
        fresh = asyncio.get_running_loop().time() - self._read_at <= self.fresh_s
        return fresh and self.waiting > self.max_waiting

    async def _fetch(self) -> float:
        request = WireRequest(
            "GET",
            self.url,
            {"accept": "text/plain"},
            read_timeout_s=self.timeout_s,
            connect_timeout_s=self.timeout_s,
            max_body_bytes=MAX_METRICS_BYTES,
        )
        async with asyncio.timeout(self.timeout_s * 2):
            reply = await self._wire.send(request)
        if not 200 <= reply.status < 300:
            raise ValueError(f"HTTP {reply.status}")
        # Parsing a large exposition takes milliseconds of CPU: off the event loop.
        value = await asyncio.to_thread(waiting_requests, reply.body.decode("utf-8", "replace"), self.names)
        if value is None:
            raise ValueError(f"none of {', '.join(self.names)} with a valid value")
        return value

    async def read_once(self) -> float | None:
        """One reading; returns it, or None when it failed (logged on the first failure)."""
        was_holding = self.holding
        try:
            value = await self._fetch()
        except (WireError, BodyTooLarge, TimeoutError, ValueError) as exc:
            telemetry.BACKEND_METRICS_ERRORS.inc()
            if not self._failing:
                log.warning("backend metrics %s unreadable (%s); not holding on them", self.url, exc)
                self._failing = True
            self.waiting = None
            self._read_at = None
        else:
            if self._failing:
                log.info("backend metrics %s readable again", self.url)
                self._failing = False
            self.waiting = value
            self._read_at = asyncio.get_running_loop().time()
            telemetry.BACKEND_WAITING.set(value)
        holding = self.holding
        telemetry.WORKER_BACKPRESSURE.set(1 if holding else 0)
        if holding and not was_holding:
            log.info(
                "backend queue %g > %d (%s): taking no new tasks", self.waiting, self.max_waiting, self.url
            )
            self.opened.clear()
        elif not holding:
            if was_holding:
                log.info("backend queue down to %s: taking tasks again", self.waiting)
            self.opened.set()
        return self.waiting

    async def run(self) -> None:
        """Read forever (a worker's side loop; cancelled when it stops)."""
        while True:
            try:
                await self.read_once()
            except Exception:  # a bug here must not take the worker down: stay open
                log.exception("reading backend metrics %s failed", self.url)
                self.waiting = None
                self.opened.set()
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._wire.aclose()
