"""The backend's settings (``MRSA_BACKEND_URL``, ``MRSA_BACKEND_KIND``, ``MRSA_MODEL``…): which
inference server, and how its client talks to it.

Owned here, below everything that opens a backend: an entry point's settings subclass this group,
and the composition root (:mod:`mrsa.runtime`) turns it into a client, so every field reaches
every entry point (``solve``, ``bench``, ``worker``, ``serve``).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.backends.factory import BACKEND_KINDS
from mrsa.backends.http import HEADER_NAME_PATTERN, HttpOptions
from mrsa.backends.pressure import DEFAULT_WAITING_METRICS
from mrsa.env import ENV_PREFIX


def blank_is_unset(value: object) -> object:
    """``MRSA_X=`` (as compose passes an unset variable) means unset."""
    return None if isinstance(value, str) and not value.strip() else value


class BackendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    backend_url: str | None = Field(
        None,
        description="Inference server URL; unset = the embedded CPU model.",
        json_schema_extra={"flag": "--backend"},
    )
    backend_kind: str = Field("auto", description=f"Server type: {', '.join(BACKEND_KINDS)}.")
    model: str | None = Field(
        None, description="Model id sent to the inference server; unset = the server's."
    )
    tokenizer: Path | None = Field(
        None,
        description="Triton: the served model's tokenizer.json or its folder (the bundled model's is found by name).",
    )
    backend_concurrency: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Requests in flight per process (default: the server's capacity).",
        json_schema_extra={"flag": "--concurrency"},
    )
    backend_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Read timeout of one backend request, seconds.",
        json_schema_extra={"flag": "--timeout"},
    )
    backend_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Backend retries on 429/5xx/timeouts.",
        json_schema_extra={"flag": "--retries"},
    )
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
        json_schema_extra={"flag": "--priority"},
    )
    backend_routing_header: str | None = Field(
        None,
        description="Header carrying each candidate's lineage key to a router in front of several "
        "inference servers (its session or consistent-hash key, e.g. x-smg-routing-key); unset = none.",
        json_schema_extra={"flag": "--routing-header"},
    )
    backend_context_length: int | None = Field(
        None,
        ge=1,
        description="The backend's context in tokens, when the server does not report it (vLLM and "
        "`mrsa backend` report theirs).",
        json_schema_extra={"flag": "--context-length"},
    )
    backend_metrics_url: str | None = Field(
        None,
        description="Prometheus text endpoint of the router or inference server (e.g. vLLM's /metrics); "
        "while its queue is longer than backend_max_waiting, workers take no new tasks. Unset = not read.",
        json_schema_extra={"flag": "--backend-metrics"},
    )
    backend_max_waiting: int = Field(
        32,
        ge=0,
        description="Requests waiting in the backend's queue (per backend_metrics_url) above which "
        "workers hold off taking new tasks.",
        json_schema_extra={"flag": "--max-waiting"},
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

    @field_validator(
        "backend_context_length",
        "backend_deadline_s",
        "tokenizer",
        "backend_routing_header",
        "backend_metrics_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``MRSA_BACKEND_CONTEXT_LENGTH=`` or ``MRSA_TOKENIZER=`` means unset: ask the server,
        find the tokenizer by the model's name."""
        return blank_is_unset(value)

    @field_validator("backend_kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in BACKEND_KINDS:
            raise ValueError(f"unknown {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
        return kind

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
