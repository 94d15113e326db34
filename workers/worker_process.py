"""The worker process: connect to Redis and the backend (waiting for both to come up), size the
task loop to the backend's capacity, serve Prometheus metrics, and stop gracefully on a signal.

``mrsa worker`` (the environment with flags on top) and ``python -m workers`` (the environment
alone) both build a :class:`~workers.settings.WorkerSettings` and hand it to :func:`run`; the store
and the backend come from the composition root (:func:`mrsa.runtime.open_runtime`), which waits for
both with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
from contextlib import AbstractAsyncContextManager
from http.server import ThreadingHTTPServer

from mrsa.backends.pressure import BackendPressure
from mrsa.engine.job_service import JobService
from mrsa.engine.runner import TaskRunner
from mrsa.runtime import BackendOptions, Runtime, Stopped, StoreOptions, open_runtime
from mrsa.store.base import StoreUnavailable
from mrsa.urls import redact
from workers.health import WorkerHealth, start_health_server
from workers.loop import Worker, WorkerOptions, consumer_name
from workers.settings import WorkerSettings

log = logging.getLogger("mrsa.worker")


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


def open_worker_runtime(
    settings: WorkerSettings, stop: asyncio.Event
) -> AbstractAsyncContextManager[Runtime]:
    """The worker's runtime: Redis and the backend (the embedded model when no URL is set), each
    retried with back-off until it answers (Redis may still be loading, a vLLM server takes minutes
    to load); raises :class:`~mrsa.runtime.Stopped` if ``stop`` is set first."""
    return open_runtime(
        settings,
        store=StoreOptions(wait_s=math.inf),
        backend=BackendOptions(wait=True),
        stop=stop,
    )


def backend_pressure(settings: WorkerSettings) -> BackendPressure | None:
    """The reader of ``MRSA_BACKEND_METRICS_URL`` (None when unset)."""
    if not settings.backend_metrics_url:
        return None
    return BackendPressure(
        settings.backend_metrics_url,
        max_waiting=settings.backend_max_waiting,
        names=settings.waiting_metric_names(),
        interval_s=settings.backend_metrics_interval_s,
    )


def start_metrics_server(port: int, host: str, health: WorkerHealth) -> ThreadingHTTPServer | None:
    """The metrics and probe endpoints (:mod:`workers.health`, a daemon thread) when ``port`` is
    set; raises OSError when it is taken."""
    if not port:
        return None
    server = start_health_server(port, host, health)
    log.info("metrics on http://%s:%d/metrics (probes: /healthz, /readyz)", host, port)
    return server


def run(settings: WorkerSettings, verbose: bool = False) -> None:
    """The worker process: log as its consumer, serve until a signal (``mrsa worker`` and
    ``python -m workers``). Raises what :func:`serve` raises (a backend that refuses for good, a
    metrics port that is taken)."""
    configure_logging(_consumer(settings), logging.DEBUG if verbose else logging.INFO)
    # What is loaded by now lives as long as the process: mostly sympy and math-verify (imported
    # with answer clustering), ~120k objects that every full collection would walk again. Moved to
    # the permanent generation, the collector's passes on the hot path see only the worker's own.
    gc.freeze()
    asyncio.run(serve(settings))


def _consumer(settings: WorkerSettings) -> str:
    """The worker's consumer name in the task queue's group: the configured one or hostname-pid."""
    return settings.worker_consumer or consumer_name()


async def serve(settings: WorkerSettings, stop: asyncio.Event | None = None) -> Worker | None:
    """Run one worker until ``stop`` is set or SIGTERM/SIGINT arrives; returns the worker (for its
    counters) or ``None`` when stopped before it could start."""
    stop = stop or asyncio.Event()
    consumer = _consumer(settings)
    loop = asyncio.get_running_loop()
    worker: Worker | None = None
    # A loop silent for the reclaim timeout has lost its tasks to other workers already.
    health = WorkerHealth(stall_s=settings.worker_reclaim_idle_s)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: releasing in-flight tasks now", signal.Signals(signum).name)
            if worker is not None:
                worker.force_stop()
            return
        log.info("%s: no new tasks; finishing in-flight ones", signal.Signals(signum).name)
        health.state = "draining"
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    beating = asyncio.create_task(health.keep_beating())
    metrics_server: ThreadingHTTPServer | None = None
    try:
        metrics_server = start_metrics_server(
            settings.worker_metrics_port, settings.worker_metrics_host, health
        )
        async with contextlib.AsyncExitStack() as stack:
            try:
                runtime = await stack.enter_async_context(open_worker_runtime(settings, stop))
            except Stopped:
                return None
            backend, info = runtime.ready()
            store = runtime.store
            capacity = runtime.capacity
            options = WorkerOptions(
                capacity=capacity,
                reclaim_idle_ms=int(settings.worker_reclaim_idle_s * 1000),
                heartbeat_s=settings.worker_heartbeat_s,
                shutdown_grace_s=settings.worker_shutdown_grace_s,
                backend_hold_s=settings.worker_backend_hold_s,
            )
            pressure = backend_pressure(settings)
            if pressure is not None:
                stack.push_async_callback(pressure.aclose)
            worker = Worker(
                TaskRunner(JobService(store), backend),
                store,
                options,
                consumer=consumer,
                pressure=pressure,
            )
            log.info(
                "worker %s ready: redis %s, backend %s (%s, model %s), %d task(s) at a time",
                consumer,
                redact(settings.redis_url or ""),  # set: WorkerSettings requires it
                info.url,
                info.kind,
                info.model,
                capacity,
            )
            if not stop.is_set():
                health.state = "ready"
            await worker.run(stop)
            health.state = "draining"
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
        beating.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
