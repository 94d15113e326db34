"""``mrsa worker``: run tasks from Redis against one backend (``python -m workers`` is the same,
configured by the environment alone).

Its flags are generated from the :class:`~workers.settings.WorkerSettings` fields they set
(:func:`mrsa.cli.options.setting_flags`), so the flags given become the settings' init arguments:
they override ``MRSA_*``, which override the defaults.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mrsa.backends.base import BackendError
from mrsa.cli.common import fail, settings_from_flags
from mrsa.cli.options import BACKEND_FLAGS, setting_flags
from mrsa.servers.embedded import EmbeddedUnavailable
from workers.settings import WorkerSettings


@setting_flags(
    WorkerSettings,
    "redis_url",
    *BACKEND_FLAGS,
    "worker_consumer",
    "worker_reclaim_idle_s",
    "worker_heartbeat_s",
    "worker_shutdown_grace_s",
    "worker_backend_hold_s",
    "worker_metrics_port",
    "worker_metrics_host",
    "backend_metrics_url",
    "backend_max_waiting",
)
def worker(
    ctx: typer.Context,
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
