"""The client commands' settings (``MRSA_API_URL``, ``MRSA_API_KEY``: where the mrsa API is and the
key ``mrsa submit``, ``status``, ``watch``… use), and :class:`Settings`, the flat union of every
group that the CLI's commands lay their flags on.

Each group is owned by the layer it configures (:mod:`mrsa.backends.settings`, :mod:`mrsa.store.settings`, :mod:`mrsa.engine.settings`, :mod:`mrsa.api.settings`, :mod:`workers.settings`, ``PriceSettings`` in :mod:`mrsa.prices`); the union sits here, at
the top, so ``settings.backend_url`` reads the same in every command.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.api.settings import ApiSettings
from mrsa.engine.settings import EquivalenceSettings
from mrsa.env import ENV_PREFIX
from workers.settings import WorkerFields


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    api_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of the mrsa API (client commands).",
        json_schema_extra={"flag": "--api"},
    )
    api_key: str | None = Field(None, description="API key used by the client commands.")


class Settings(WorkerFields, ApiSettings, ClientSettings, EquivalenceSettings):
    """Every setting: the groups' union (no cross-field checks of one command's: ``mrsa worker``
    runs on :class:`workers.settings.WorkerSettings`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
