"""Environment configuration (``MRSA_*``), in one place.

One pydantic-settings model: every knob is defined once here, read from the environment over its
default, and a command's flags are laid on top by constructing the model with them (init arguments
beat the environment). ``mrsa worker`` and ``python -m workers`` both run on :class:`WorkerSettings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.backends.factory import BACKEND_KINDS
from mrsa.backends.http import HEADER_NAME_PATTERN, HttpOptions
from mrsa.backends.pressure import DEFAULT_WAITING_METRICS
from mrsa.store.redis_address import parse_redis_url

# Answer clustering under a limit (mrsa.engine.equivalence): defaults shared with its pure functions.
EQUIVALENCE_TIMEOUT_S = 5.0
EQUIVALENCE_MAX_CHARS = 1000
EQUIVALENCE_WORKERS = 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MRSA_", extra="ignore")

    backend_url: str | None = Field(None, description="Inference server URL; unset = the embedded CPU model.")
    backend_kind: str = Field("auto", description=f"Server type: {', '.join(BACKEND_KINDS)}.")
    model: str | None = Field(None, description="Model id sent to the inference server.")
    tokenizer: Path | None = Field(
        None,
        description="Triton: the served model's tokenizer.json or its folder (the bundled model's is found by name).",
    )
    backend_concurrency: int | None = Field(
        None, ge=1, le=4096, description="Requests in flight per worker (default: the server's capacity)."
    )
    backend_timeout_s: float = Field(600.0, gt=0, description="Read timeout of one backend request.")
    backend_retries: int = Field(4, ge=0, le=20)
    backend_deadline_s: float | None = Field(
        None, gt=0, description="Total time of one backend request, seconds; unset = 6 × the read timeout."
    )
    backend_min_tokens_per_s: float = Field(
        10.0,
        gt=0,
        description="Slowest decode a generation is allowed: β tokens get a timeout of at least β / this.",
    )
    backend_retry_after_cap_s: float = Field(
        60.0, ge=0, description="Longest wait a backend's Retry-After header can impose, seconds."
    )
    backend_max_body_bytes: int = Field(
        64 * 2**20, ge=1024, description="Largest backend reply body read, bytes; bigger is an error."
    )
    backend_priority: bool = Field(
        False,
        description="Send each generation's priority to a vLLM server (-round: later rounds first); the "
        "server must run with --scheduling-policy priority, or it rejects such requests.",
    )
    backend_routing_header: str | None = Field(
        None,
        description="Header carrying each candidate's lineage key to a router in front of several "
        "inference servers (its session or consistent-hash key, e.g. x-smg-routing-key); unset = none.",
    )
    backend_metrics_url: str | None = Field(
        None,
        description="Prometheus text endpoint of the router or inference server (e.g. vLLM's /metrics); "
        "while its queue is longer than backend_max_waiting, workers take no new tasks. Unset = not read.",
    )
    backend_max_waiting: int = Field(
        32,
        ge=0,
        description="Requests waiting in the backend's queue (per backend_metrics_url) above which "
        "workers hold off taking new tasks.",
    )
    backend_waiting_metrics: str = Field(
        ",".join(DEFAULT_WAITING_METRICS),
        min_length=1,
        description="Comma-separated metric names read as the queue length, first present wins "
        "(its samples summed): vLLM, SGLang, Triton, Gateway API Inference Extension.",
    )
    backend_metrics_interval_s: float = Field(
        2.0, gt=0, description="How often a worker reads backend_metrics_url, seconds."
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL of the job store and task queue: redis://, rediss://, or "
        "redis+sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[/<db>].",
    )
    redis_sentinel_password: str | None = Field(
        None, description="Password of the Sentinels themselves (a redis+sentinel:// URL's is the master's)."
    )
    redis_prefix: str = Field(
        "mrsa", min_length=1, description="Prefix of every Redis key (several deployments, one Redis)."
    )
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries of a task before it is dead-lettered (its job fails)."
    )
    retention_s: int = Field(
        7 * 86400, ge=1, description="How long a finished job is kept in Redis, seconds."
    )
    worker_consumer: str | None = Field(None, description="Worker consumer name (default: hostname-pid).")
    worker_reclaim_idle_s: float = Field(
        60.0, gt=0, description="Reclaim a task whose worker has been silent this long, seconds."
    )
    worker_heartbeat_s: float = Field(
        10.0, gt=0, description="Heartbeat interval of in-flight tasks, seconds."
    )
    worker_backend_hold_s: float = Field(
        600.0,
        ge=0,
        description="How long a worker retries a task whose backend requests keep failing (down, busy, "
        "timing out) before failing the job, seconds (0 = fail at once).",
    )
    worker_shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, time to finish in-flight tasks before releasing them, seconds."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Worker Prometheus metrics port; 0 = off."
    )
    worker_metrics_host: str = Field("0.0.0.0", description="Interface the worker metrics server binds.")
    prices_file: Path | None = Field(
        None,
        description="Price table (TOML or JSON; per million prompt, cached-prompt and decode tokens, by "
        "model id) for the cost of a job (mrsa.prices).",
    )
    api_keys: str = Field("", description="Comma-separated bearer API keys; empty disables auth.")
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the mrsa API (client commands).")
    api_key: str | None = Field(None, description="API key used by the client commands.")
    api_max_problem_bytes: int = Field(100_000, ge=1, description="Largest problem the API accepts, bytes.")
    api_max_active_jobs: int = Field(16, ge=1, description="Queued + running jobs per API key (429 above).")
    backend_context_length: int | None = Field(
        None, ge=1, description="The backend's context in tokens, when the server does not report it."
    )
    api_max_streams_per_key: int = Field(
        64, ge=1, description="Event streams and waiting chat completions per API key (429 above)."
    )
    api_max_streams: int = Field(
        1_000, ge=1, description="Event streams and waiting chat completions of the whole API (503 above)."
    )
    api_passthrough_max_bytes: int = Field(
        64 * 2**20,
        ge=1024,
        description="Largest reply body a chat passthrough relays, bytes; a longer one is cut there.",
    )
    api_passthrough_timeout_s: float = Field(
        1_800.0,
        gt=0,
        description="Total time of one chat passthrough (the backend's silence before its reply "
        "included), seconds; then it is cut.",
    )
    api_passthrough_idle_s: float = Field(
        300.0,
        gt=0,
        description="Longest silence of the backend within a chat passthrough's reply body, seconds; "
        "then it is cut.",
    )
    api_max_passthroughs_per_key: int = Field(
        64, ge=1, description="Chat passthroughs open per API key (429 above)."
    )
    api_max_passthroughs: int = Field(
        512, ge=1, description="Chat passthroughs open in the whole API (503 above)."
    )
    api_passthrough_drain_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, time open chat passthroughs get to finish before they are cut, seconds.",
    )
    allow_no_auth: bool = Field(
        False, description="Let `mrsa serve` listen on a non-loopback interface without API keys."
    )
    reports_dir: Path | None = Field(
        None,
        description="Folder whose run folders (written by `mrsa bench` + `mrsa report`) the API serves "
        "under /v1/reports and the web console shows; unset = none.",
    )
    equivalence_timeout_s: float = Field(
        EQUIVALENCE_TIMEOUT_S,
        gt=0,
        description="Wall-clock limit of one math-verify call when clustering answers, seconds.",
    )
    equivalence_max_chars: int = Field(
        EQUIVALENCE_MAX_CHARS,
        ge=1,
        description="Longer answers are compared as normalised strings, not symbolically.",
    )
    equivalence_workers: int = Field(
        EQUIVALENCE_WORKERS,
        ge=1,
        description="Processes per mrsa process that run math-verify for answer clustering.",
    )

    @field_validator(
        "backend_context_length",
        "backend_deadline_s",
        "tokenizer",
        "reports_dir",
        "backend_routing_header",
        "backend_metrics_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``MRSA_BACKEND_CONTEXT_LENGTH=``, ``MRSA_TOKENIZER=`` or ``MRSA_REPORTS_DIR=`` (as compose
        passes an unset variable) means unset: ask the server, find the tokenizer by the model's
        name, serve no reports."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backend_kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in BACKEND_KINDS:
            raise ValueError(f"unknown {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
        return kind

    @field_validator("redis_url")
    @classmethod
    def _readable_redis_url(cls, url: str | None) -> str | None:
        """A malformed Sentinel URL is reported here, naming the field, not at the first connect."""
        if url:
            parse_redis_url(url)
        return url

    @field_validator("backend_routing_header")
    @classmethod
    def _header_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(HEADER_NAME_PATTERN, name):
            raise ValueError(
                f"{name!r} is not an HTTP header name (letters, digits, - and _; no spaces or ':')"
            )
        return name

    @field_validator("backend_metrics_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    def waiting_metric_names(self) -> list[str]:
        """``backend_waiting_metrics`` as a list of names."""
        return [n.strip() for n in self.backend_waiting_metrics.split(",") if n.strip()]

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    def http_options(self) -> HttpOptions:
        """The backend client's connection settings. ``concurrency`` stays unset (out of
        ``model_fields_set``) unless ``backend_concurrency`` is given, so the client sizes it to the
        server's own capacity (:func:`mrsa.backends.http.with_default_concurrency`)."""
        return HttpOptions(
            timeout_s=self.backend_timeout_s,
            max_retries=self.backend_retries,
            deadline_s=self.backend_deadline_s,
            min_tokens_per_s=self.backend_min_tokens_per_s,
            retry_after_cap_s=self.backend_retry_after_cap_s,
            max_body_bytes=self.backend_max_body_bytes,
            routing_header=self.backend_routing_header,
            **({"concurrency": self.backend_concurrency} if self.backend_concurrency else {}),
        )


class WorkerSettings(Settings):
    """What a worker process runs with: the same knobs, plus the checks a worker needs before it
    starts (a Redis URL; heartbeats more often than the reclaim timeout)."""

    @model_validator(mode="after")
    def _check_worker(self) -> Self:
        if not self.redis_url:
            raise ValueError("redis: give --redis URL or set MRSA_REDIS_URL")
        if self.worker_heartbeat_s >= self.worker_reclaim_idle_s:
            raise ValueError("heartbeat: must be shorter than --reclaim-idle, or live tasks get reclaimed")
        return self


def env_name(field: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def describe_settings_error(exc: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """One line per bad value, each named the way the user gave it: by its flag when ``flags``
    (field → flag name) has it, else by its environment variable."""
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:  # a check across fields names its values itself
            parts.append(msg)
            continue
        field = str(err["loc"][0])
        parts.append(f"{(flags or {}).get(field) or env_name(field)}: {msg}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
