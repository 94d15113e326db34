"""The worker process: connect to Redis and the backend (waiting for both to come up), size the
task loop to the backend's capacity, serve Prometheus metrics, and stop gracefully on a signal.

``mrsa worker`` and ``python -m workers`` both end up in :func:`serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from mrsa.backends.base import Backend, BackendError, BackendInfo
from mrsa.backends.factory import open_backend
from mrsa.backends.http import HttpOptions
from mrsa.engine.runner import TaskRunner
from mrsa.engine.service import JobService
from mrsa.settings import get_settings
from mrsa.store.base import Store, StoreUnavailable
from mrsa.store.opening import open_store
from mrsa.urls import redact
from workers.loop import Worker, WorkerOptions, consumer_name

log = logging.getLogger("mrsa.worker")


@dataclass
class WorkerConfig:
    """Everything ``mrsa worker`` can be told (flags or ``MRSA_*``)."""

    redis_url: str
    backend_url: str | None = None
    backend_kind: str = "auto"
    model: str | None = None
    tokenizer: Path | None = None  # Triton: the served model's tokenizer
    concurrency: int | None = None
    consumer: str | None = None
    reclaim_idle_s: float = 60.0
    heartbeat_s: float = 10.0
    shutdown_grace_s: float = 30.0
    backend_hold_s: float = 600.0
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    prefix: str = "mrsa"
    max_deliveries: int = 5
    retention_s: int = 7 * 86400
    http: HttpOptions = field(default_factory=HttpOptions)


def configure_logging(consumer: str, level: int = logging.INFO) -> None:
    """One line per notable event; the HTTP client's per-request lines are left out."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{consumer}] %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.getLogger("mrsa").setLevel(level)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def connect_redis(config: WorkerConfig, stop: asyncio.Event) -> AbstractAsyncContextManager[Store]:
    """The store, retrying with backoff until Redis answers; raises StoreUnavailable if ``stop``
    is set first."""
    settings = get_settings().model_copy(
        update={
            "redis_prefix": config.prefix,
            "max_deliveries": config.max_deliveries,
            "retention_s": config.retention_s,
        }
    )
    return open_store(config.redis_url, settings, wait_s=math.inf, stop=stop)


@contextlib.asynccontextmanager
async def connect_backend(
    config: WorkerConfig, stop: asyncio.Event
) -> AsyncIterator[tuple[Backend, BackendInfo] | None]:
    """The backend (the embedded model when no URL is set), retrying while the server is not up
    yet (a vLLM server takes minutes to load); yields ``None`` if stopped first."""
    delay = 1.0
    warned = False
    while not stop.is_set():
        async with contextlib.AsyncExitStack() as stack:
            try:
                backend = await stack.enter_async_context(
                    open_backend(
                        config.backend_url,
                        config.backend_kind,
                        model=config.model,
                        options=config.http,
                        tokenizer=config.tokenizer,
                    )
                )
                info = await backend.info()
            except BackendError as exc:
                if not exc.retryable:
                    raise
                if not warned:
                    log.warning("waiting for the backend: %s", exc)
                    warned = True
            else:
                yield backend, info
                return
        await _wait(stop, random.uniform(delay / 2, delay))
        delay = min(delay * 2, 15.0)
    yield None


def start_metrics_server(port: int, host: str) -> None:
    """prometheus_client's own HTTP server (a daemon thread); it ends with the process."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)


async def serve(config: WorkerConfig, stop: asyncio.Event | None = None) -> Worker | None:
    """Run one worker until ``stop`` is set or SIGTERM/SIGINT arrives; returns the worker (for its
    counters) or ``None`` when stopped before it could start."""
    stop = stop or asyncio.Event()
    consumer = config.consumer or consumer_name()
    loop = asyncio.get_running_loop()
    worker: Worker | None = None

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: releasing in-flight tasks now", signal.Signals(signum).name)
            if worker is not None:
                worker.force_stop()
            return
        log.info("%s: no new tasks; finishing in-flight ones", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        start_metrics_server(config.metrics_port, config.metrics_host)
        async with contextlib.AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(connect_redis(config, stop))
            except StoreUnavailable:
                if stop.is_set():
                    return None
                raise
            async with connect_backend(config, stop) as connected:
                if connected is None:
                    return None
                backend, info = connected
                capacity = config.concurrency or info.capacity
                options = WorkerOptions(
                    capacity=capacity,
                    reclaim_idle_ms=int(config.reclaim_idle_s * 1000),
                    heartbeat_s=config.heartbeat_s,
                    shutdown_grace_s=config.shutdown_grace_s,
                    backend_hold_s=config.backend_hold_s,
                )
                worker = Worker(TaskRunner(JobService(store), backend), store, options, consumer=consumer)
                log.info(
                    "worker %s ready: redis %s, backend %s (%s, model %s), %d task(s) at a time",
                    consumer,
                    redact(config.redis_url),
                    info.url,
                    info.kind,
                    info.model,
                    capacity,
                )
                await worker.run(stop)
                with contextlib.suppress(StoreUnavailable):
                    await store.forget_consumer(consumer)
                log.info(
                    "worker %s stopped: %d task(s) done, %d reclaimed, %d released",
                    consumer,
                    worker.completed,
                    worker.reclaimed,
                    worker.released,
                )
                return worker
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
