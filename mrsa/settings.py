"""Environment configuration (``MRSA_*``), in one place. Every value can be overridden by a flag."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MRSA_", extra="ignore")

    backend_url: str | None = Field(None, description="Inference server URL; unset = the embedded CPU model.")
    backend_kind: str = Field("auto", description="auto, vllm, sglang, llamacpp, llama-cpp-python or triton.")
    model: str | None = Field(None, description="Model id sent to the inference server.")
    backend_concurrency: int | None = Field(
        None, ge=1, description="Requests in flight per worker (default: the server's capacity)."
    )
    backend_timeout_s: float = Field(600.0, gt=0, description="Read timeout of one backend request.")
    backend_retries: int = Field(4, ge=0, le=20)
    redis_url: str | None = Field(None, description="Redis URL of the job store and task queue.")
    api_keys: str = Field("", description="Comma-separated bearer API keys; empty disables auth.")
    api_url: str = Field("http://127.0.0.1:8000", description="Base URL of the mrsa API (client commands).")
    api_key: str | None = Field(None, description="API key used by the client commands.")

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
