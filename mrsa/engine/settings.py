"""The engine's settings: the limits of answer clustering (``MRSA_EQUIVALENCE_*``,
:mod:`mrsa.engine.equivalence`), owned here with the defaults its pure functions share."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.env import ENV_PREFIX

EQUIVALENCE_TIMEOUT_S = 5.0
EQUIVALENCE_MAX_CHARS = 1000
EQUIVALENCE_WORKERS = 1


class EquivalenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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


@lru_cache(maxsize=1)
def equivalence_settings() -> EquivalenceSettings:
    """The process's clustering limits, read from the environment once."""
    return EquivalenceSettings()
