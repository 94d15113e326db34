"""The store's settings (``MRSA_REDIS_URL``, ``MRSA_REDIS_PREFIX``…): what :func:`mrsa.store.opening.open_store` opens.

Owned here, below everything that opens a store: an entry point's settings subclass this group
(with the backend's and its own), so ``settings.redis_url`` reads the same everywhere.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.env import ENV_PREFIX
from mrsa.store.redis_address import parse_redis_url


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    redis_url: str | None = Field(
        None,
        description="Redis URL of the job store and task queue: redis://, rediss://, or "
        "redis+sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[/<db>].",
        json_schema_extra={"flag": "--redis"},
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
    # The task queue's: the worker reclaims such tasks, the API's gauges count them as stalled.
    worker_reclaim_idle_s: float = Field(
        60.0,
        gt=0,
        description="Take over tasks whose worker has been silent this long, seconds.",
        json_schema_extra={"flag": "--reclaim-idle"},
    )

    @field_validator("redis_url")
    @classmethod
    def _readable_redis_url(cls, url: str | None) -> str | None:
        """A malformed Sentinel URL is reported here, naming the field, not at the first connect."""
        if url:
            parse_redis_url(url)
        return url
