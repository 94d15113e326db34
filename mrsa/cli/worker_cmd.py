"""``mrsa worker`` (also ``python -m workers``): run tasks from Redis against one backend."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from mrsa.backends.base import BackendError
from mrsa.backends.embedded import EmbeddedUnavailable
from mrsa.cli.common import EXIT_USAGE, fail
from mrsa.cli.options import BackendKindOpt, RedisOpt, TokenizerOpt, check_backend_kind, http_options
from mrsa.settings import get_settings


def worker(
    redis: RedisOpt = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", help="Inference server URL (env MRSA_BACKEND_URL); unset = start the embedded model."
        ),
    ] = None,
    backend_kind: BackendKindOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model id (env MRSA_MODEL); default: the server's.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Tasks in flight (env MRSA_BACKEND_CONCURRENCY); default: the backend's capacity."),
    ] = None,
    tokenizer: TokenizerOpt = None,
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name (env MRSA_WORKER_CONSUMER); default: hostname-pid.")
    ] = None,
    reclaim_idle: Annotated[
        float | None,
        typer.Option(
            help="Take over tasks whose worker has been silent this long, seconds (env MRSA_WORKER_RECLAIM_IDLE_S)."
        ),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option(help="Heartbeat interval of in-flight tasks, seconds (env MRSA_WORKER_HEARTBEAT_S)."),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            help="On SIGTERM, seconds to finish in-flight tasks before releasing them (env MRSA_WORKER_SHUTDOWN_GRACE_S)."
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port; 0 = off (env MRSA_WORKER_METRICS_PORT)."),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Interface of the metrics server (env MRSA_WORKER_METRICS_HOST).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Backend read timeout, seconds (env MRSA_BACKEND_TIMEOUT_S).")
    ] = None,
    retries: Annotated[
        int | None, typer.Option(help="Backend retries on 429/5xx/timeouts (env MRSA_BACKEND_RETRIES).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log every task start.")] = False,
) -> None:
    """Run Markovian RSA tasks from Redis: as many at a time as the backend can serve; SIGTERM
    finishes (or releases) in-flight tasks and exits."""
    import logging

    from workers.loop import consumer_name
    from workers.service import WorkerConfig, configure_logging, serve

    s = get_settings()
    redis_url = redis or s.redis_url
    if not redis_url:
        fail("redis: give --redis URL or set MRSA_REDIS_URL", EXIT_USAGE)
    kind = check_backend_kind(backend_kind or s.backend_kind)
    checks = {
        "concurrency": (concurrency, 1),
        "reclaim-idle": (reclaim_idle, 0.001),
        "heartbeat": (heartbeat, 0.001),
        "shutdown-grace": (shutdown_grace, 0),
        "metrics-port": (metrics_port, 0),
    }
    for name, (value, low) in checks.items():
        if value is not None and value < low:
            fail(f"{name}: must be ≥ {low}", EXIT_USAGE)
    config = WorkerConfig(
        redis_url=redis_url,
        backend_url=backend or s.backend_url,
        backend_kind=kind,
        model=model or s.model,
        tokenizer=tokenizer or s.tokenizer,
        concurrency=concurrency or s.backend_concurrency,
        consumer=consumer or s.worker_consumer or consumer_name(),
        reclaim_idle_s=reclaim_idle or s.worker_reclaim_idle_s,
        heartbeat_s=heartbeat or s.worker_heartbeat_s,
        shutdown_grace_s=s.worker_shutdown_grace_s if shutdown_grace is None else shutdown_grace,
        metrics_port=s.worker_metrics_port if metrics_port is None else metrics_port,
        metrics_host=metrics_host or s.worker_metrics_host,
        prefix=s.redis_prefix,
        max_deliveries=s.max_deliveries,
        retention_s=s.retention_s,
    )
    if config.heartbeat_s >= config.reclaim_idle_s:
        fail("heartbeat: must be shorter than --reclaim-idle, or live tasks get reclaimed", EXIT_USAGE)
    config.http = http_options(timeout, retries, concurrency, s)  # unset: the server's capacity
    configure_logging(config.consumer or "worker", logging.DEBUG if verbose else logging.INFO)
    try:
        asyncio.run(serve(config))
    except (BackendError, EmbeddedUnavailable) as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. the metrics port is taken
        fail(f"{type(exc).__name__}: {exc}")
