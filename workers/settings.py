"""The worker's settings (``MRSA_WORKER_*``), over the runtime's (the store and the backend).

``mrsa worker`` (the environment with flags on top) and ``python -m workers`` (the environment
alone) both build a :class:`WorkerSettings` and hand it to :func:`workers.worker_process.run`.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from mrsa.env import ENV_PREFIX
from mrsa.runtime import RuntimeSettings


class WorkerFields(RuntimeSettings):
    """The worker's own knobs, on the runtime's (no cross-field checks: the flat
    :class:`mrsa.cli.settings.Settings` carries these too)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    worker_consumer: str | None = Field(
        None,
        description="Worker consumer name; default: hostname-pid.",
        json_schema_extra={"flag": "--consumer"},
    )
    worker_heartbeat_s: float = Field(
        10.0,
        gt=0,
        description="Heartbeat interval of in-flight tasks, seconds.",
        json_schema_extra={"flag": "--heartbeat"},
    )
    worker_backend_hold_s: float = Field(
        600.0,
        ge=0,
        description="Retry a task whose backend requests keep failing (down, busy, timing out) this long "
        "before failing its job, seconds; 0 = fail at once. The worker takes no new tasks meanwhile "
        "only when the backend is out: 3 tasks failing in a row or a failed health probe.",
        json_schema_extra={"flag": "--backend-hold"},
    )
    worker_shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, time to finish in-flight tasks before releasing them, seconds.",
        json_schema_extra={"flag": "--shutdown-grace"},
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Worker Prometheus metrics port; 0 = off.",
        json_schema_extra={"flag": "--metrics-port"},
    )
    worker_metrics_host: str = Field(
        "0.0.0.0",
        description="Interface the worker metrics server binds.",
        json_schema_extra={"flag": "--metrics-host"},
    )


class WorkerSettings(WorkerFields):
    """What a worker process runs with, and the checks a worker needs before it starts (a Redis
    URL; heartbeats more often than the reclaim timeout)."""

    @model_validator(mode="after")
    def _check_worker(self) -> Self:
        if not self.redis_url:
            raise ValueError("redis: give --redis URL or set MRSA_REDIS_URL")
        if self.worker_heartbeat_s >= self.worker_reclaim_idle_s:
            raise ValueError("heartbeat: must be shorter than --reclaim-idle, or live tasks get reclaimed")
        return self
