"""``mrsa worker``: run tasks from Redis against one backend (``python -m workers`` is the same,
configured by the environment alone).

Each parameter is named after the :class:`~mrsa.settings.Settings` field it sets (its flag is
spelled in ``typer.Option``), so the flags given become the settings' init arguments: they
override ``MRSA_*``, which override the defaults.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mrsa.backends.base import BackendError
from mrsa.cli.common import fail, settings_from_flags
from mrsa.cli.options import BackendKindOpt, PriorityOpt, RedisOpt, TokenizerOpt
from mrsa.servers.embedded import EmbeddedUnavailable
from mrsa.settings import WorkerSettings


def worker(
    ctx: typer.Context,
    redis_url: RedisOpt = None,
    backend_url: Annotated[
        str | None,
        typer.Option(
            "--backend", help="Inference server URL (env MRSA_BACKEND_URL); unset = start the embedded model."
        ),
    ] = None,
    backend_kind: BackendKindOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model id (env MRSA_MODEL); default: the server's.")
    ] = None,
    backend_concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            help="Tasks in flight (env MRSA_BACKEND_CONCURRENCY); default: the backend's capacity.",
        ),
    ] = None,
    tokenizer: TokenizerOpt = None,
    worker_consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="Consumer name (env MRSA_WORKER_CONSUMER); default: hostname-pid."),
    ] = None,
    worker_reclaim_idle_s: Annotated[
        float | None,
        typer.Option(
            "--reclaim-idle",
            help="Take over tasks whose worker has been silent this long, seconds (env MRSA_WORKER_RECLAIM_IDLE_S).",
        ),
    ] = None,
    worker_heartbeat_s: Annotated[
        float | None,
        typer.Option(
            "--heartbeat",
            help="Heartbeat interval of in-flight tasks, seconds (env MRSA_WORKER_HEARTBEAT_S).",
        ),
    ] = None,
    worker_shutdown_grace_s: Annotated[
        float | None,
        typer.Option(
            "--shutdown-grace",
            help="On SIGTERM, seconds to finish in-flight tasks before releasing them (env MRSA_WORKER_SHUTDOWN_GRACE_S).",
        ),
    ] = None,
    worker_backend_hold_s: Annotated[
        float | None,
        typer.Option(
            "--backend-hold",
            help="Retry a task whose backend requests keep failing (down, busy, timing out) this long "
            "before failing its job, seconds; 0 = fail at once. The worker takes no new tasks meanwhile "
            "only when the backend is out: 3 tasks failing in a row or a failed health probe "
            "(env MRSA_WORKER_BACKEND_HOLD_S).",
        ),
    ] = None,
    worker_metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on this port; 0 = off (env MRSA_WORKER_METRICS_PORT).",
        ),
    ] = None,
    worker_metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host", help="Interface of the metrics server (env MRSA_WORKER_METRICS_HOST)."
        ),
    ] = None,
    backend_timeout_s: Annotated[
        float | None,
        typer.Option("--timeout", help="Backend read timeout, seconds (env MRSA_BACKEND_TIMEOUT_S)."),
    ] = None,
    backend_retries: Annotated[
        int | None,
        typer.Option("--retries", help="Backend retries on 429/5xx/timeouts (env MRSA_BACKEND_RETRIES)."),
    ] = None,
    backend_priority: PriorityOpt = None,
    backend_routing_header: Annotated[
        str | None,
        typer.Option(
            "--routing-header",
            help="Send each candidate's lineage key in this header, for a router's affinity, e.g. "
            "x-smg-routing-key (env MRSA_BACKEND_ROUTING_HEADER); unset = none.",
        ),
    ] = None,
    backend_metrics_url: Annotated[
        str | None,
        typer.Option(
            "--backend-metrics",
            help="Prometheus URL of the router or server; take no new tasks while its queue is "
            "longer than --max-waiting (env MRSA_BACKEND_METRICS_URL).",
        ),
    ] = None,
    backend_max_waiting: Annotated[
        int | None,
        typer.Option(
            "--max-waiting",
            help="Backend queue length above which no new tasks are taken (env MRSA_BACKEND_MAX_WAITING).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log every task start.")] = False,
) -> None:
    """Run Markovian RSA tasks from Redis: as many at a time as the backend can serve; SIGTERM
    finishes (or releases) in-flight tasks and exits."""
    from workers import worker_process

    settings = settings_from_flags(WorkerSettings, ctx.params, ctx)
    try:
        worker_process.run(settings, verbose)
    except (BackendError, EmbeddedUnavailable) as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. the metrics port is taken
        fail(f"{type(exc).__name__}: {exc}")
