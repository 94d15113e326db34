"""The API's settings (``MRSA_API_*``, ``MRSA_ALLOW_NO_AUTH``, ``MRSA_REPORTS_DIR``), over the
runtime's (its store and the backend its passthrough and probes use) and the price table's.

Its defaults are written here once: :class:`mrsa.api.deps.ApiConfig` takes its env-backed ones
from these fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mrsa.backends.settings import blank_is_unset
from mrsa.env import ENV_PREFIX
from mrsa.prices import PriceSettings
from mrsa.runtime import RuntimeSettings


class ApiSettings(RuntimeSettings, PriceSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    api_keys: str = Field("", description="Comma-separated bearer API keys; empty disables auth.")
    api_max_problem_bytes: int = Field(
        100_000,
        ge=1,
        description="Largest problem the API accepts, bytes.",
        json_schema_extra={"flag": "--max-problem-bytes"},
    )
    api_max_active_jobs: int = Field(
        16,
        ge=1,
        description="Queued + running jobs per API key (429 above).",
        json_schema_extra={"flag": "--max-active-jobs"},
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
        json_schema_extra={"flag": "--passthrough-max-bytes"},
    )
    api_passthrough_timeout_s: float = Field(
        1_800.0,
        gt=0,
        description="Total time of one chat passthrough (the backend's silence before its reply "
        "included), seconds; then it is cut.",
        json_schema_extra={"flag": "--passthrough-timeout"},
    )
    api_passthrough_idle_s: float = Field(
        300.0,
        gt=0,
        description="Longest silence of the backend within a chat passthrough's reply body, seconds; "
        "then it is cut.",
        json_schema_extra={"flag": "--passthrough-idle-timeout"},
    )
    api_max_passthroughs_per_key: int = Field(
        64,
        ge=1,
        description="Chat passthroughs open per API key (429 above).",
        json_schema_extra={"flag": "--max-passthroughs-per-key"},
    )
    api_max_passthroughs: int = Field(
        512,
        ge=1,
        description="Chat passthroughs open in the whole API (503 above).",
        json_schema_extra={"flag": "--max-passthroughs"},
    )
    api_passthrough_drain_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, time open chat passthroughs get to finish before they are cut, seconds.",
        json_schema_extra={"flag": "--passthrough-drain"},
    )
    allow_no_auth: bool = Field(
        False,
        description="Let `mrsa serve` listen on a non-loopback interface without API keys: anyone who "
        "can reach the port may submit jobs and read every job.",
    )
    reports_dir: Path | None = Field(
        None,
        description="Folder whose run folders (written by `mrsa bench` + `mrsa report`) the API serves "
        "under /v1/reports and the web console shows; unset = none.",
    )

    @field_validator("reports_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``MRSA_REPORTS_DIR=`` (as compose passes an unset variable): serve no reports."""
        return blank_is_unset(value)

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


def default(field: str) -> Any:
    """The default of one of :class:`ApiSettings`' fields (for the API's config, written once)."""
    return ApiSettings.model_fields[field].default
