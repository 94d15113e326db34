"""Environment configuration (``MRSA_*``), in one place. Every value can be overridden by a flag."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MRSA_", extra="ignore")

    backend_url: str | None = Field(None, description="Inference server URL; unset = the embedded CPU model.")
    backend_kind: str = Field("auto", description="auto, vllm, sglang, llamacpp, llama-cpp-python or triton.")
    model: str | None = Field(None, description="Model id sent to the inference server.")
    tokenizer: Path | None = Field(
        None,
        description="Triton: the served model's tokenizer.json or its folder (the bundled model's is found by name).",
    )
    backend_concurrency: int | None = Field(
        None, ge=1, description="Requests in flight per worker (default: the server's capacity)."
    )
    backend_timeout_s: float = Field(600.0, gt=0, description="Read timeout of one backend request.")
    backend_retries: int = Field(4, ge=0, le=20)
    redis_url: str | None = Field(None, description="Redis URL of the job store and task queue.")
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
    worker_shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, time to finish in-flight tasks before releasing them, seconds."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Worker Prometheus metrics port; 0 = off."
    )
    worker_metrics_host: str = Field("0.0.0.0", description="Interface the worker metrics server binds.")
    api_keys: str = Field("", description="Comma-separated bearer API keys; empty disables auth.")
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the mrsa API (client commands).")
    api_key: str | None = Field(None, description="API key used by the client commands.")
    api_max_problem_bytes: int = Field(100_000, ge=1, description="Largest problem the API accepts, bytes.")
    api_max_active_jobs: int = Field(16, ge=1, description="Queued + running jobs per API key (429 above).")
    backend_context_length: int | None = Field(
        None, ge=1, description="The backend's context in tokens, when the server does not report it."
    )

    @field_validator("backend_context_length", "tokenizer", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``MRSA_BACKEND_CONTEXT_LENGTH=`` or ``MRSA_TOKENIZER=`` (as compose passes an unset
        variable) means unset: ask the server, find the tokenizer by the model's name."""
        return None if isinstance(value, str) and not value.strip() else value

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
