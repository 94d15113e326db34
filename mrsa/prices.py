"""What a job cost in money: a user's price table (per million tokens, as MathArena lists them).

The table is a TOML or JSON file (``--prices FILE`` / ``MRSA_PRICES_FILE``)::

    currency = "USD"

    [models."Zyphra/ZAYA1-8B"]
    prompt = 0.10          # per million prompt tokens the server computed
    cached_prompt = 0.025  # per million prompt tokens served from its prefix cache (unset: prompt)
    decode = 0.40          # per million generated tokens

    [models."*"]           # any other model (and the embedded one, which has no id)
    prompt = 0.0
    decode = 0.0

Cost is derived from :class:`~mrsa.domain.Usage` when a result is shown, so a table can be changed
and old jobs priced again; nothing stored depends on it.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mrsa.domain import Cost, JobResult, Usage
from mrsa.env import ENV_PREFIX

PER = 1_000_000
ANY_MODEL = "*"


class PriceSettings(BaseSettings):
    """Where the price table is (``MRSA_PRICES_FILE``): ``mrsa solve``, ``mrsa report`` and the API."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    prices_file: Path | None = Field(
        None,
        description="Price table (TOML or JSON; per million prompt, cached-prompt and decode tokens, by "
        "model id) for the cost of a job (mrsa.prices): results show their cost.",
        json_schema_extra={"flag": "--prices"},
    )


class PriceFileError(ValueError):
    """A price table that cannot be read or is invalid; the message names the file and the field."""


class Price(BaseModel):
    """Prices of one model, per million tokens."""

    model_config = ConfigDict(extra="forbid")

    # Finite only: TOML reads ``inf`` and ``nan``, JSON ``Infinity`` and ``NaN``, and a price that
    # is not a number would make every cost shown with it one that JSON cannot carry.
    prompt: float = Field(
        ge=0, allow_inf_nan=False, description="Per million prompt tokens not served from the prefix cache."
    )
    cached_prompt: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Per million prompt tokens served from the prefix cache; unset: `prompt`.",
    )
    decode: float = Field(ge=0, allow_inf_nan=False, description="Per million decode (generated) tokens.")


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: str = Field("USD", min_length=1, max_length=16)
    models: dict[str, Price] = Field(min_length=1, description='Prices by model id; "*" for any other.')

    def price_of(self, model: str | None) -> tuple[str, Price] | None:
        """The entry for ``model`` (else the ``"*"`` one) with the key it was found under."""
        for key in (model, ANY_MODEL):
            if key is not None and key in self.models:
                return key, self.models[key]
        return None

    def cost(self, usage: Usage, model: str | None) -> Cost | None:
        """What ``usage`` cost for ``model``; None when the table has no price for it, or when the
        cost is too large for a float (a finite price of 1e308 times a million tokens): a cost
        that is not a finite number is not shown, since no JSON reply could carry it."""
        found = self.price_of(model)
        if found is None:
            return None
        key, price = found
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        cached_rate = price.cached_prompt if price.cached_prompt is not None else price.prompt
        prompt = (usage.prompt_tokens - cached) * price.prompt / PER
        cached_cost = cached * cached_rate / PER
        decode = usage.decode_tokens * price.decode / PER
        if not math.isfinite(prompt + cached_cost + decode):
            return None
        return Cost(
            currency=self.currency,
            priced_as=key,
            prompt=prompt,
            cached_prompt=cached_cost,
            decode=decode,
            total=prompt + cached_cost + decode,
        )


def load_prices(path: Path) -> PriceTable:
    """Read a price table (``.toml`` or ``.json``). Raises :class:`PriceFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PriceFileError(f"prices: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise PriceFileError(f"prices: {path} is not valid {kind}: {exc}") from None
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "table"
        raise PriceFileError(f"prices: {path}: {loc}: {first['msg']}") from None


def priced(result: JobResult, table: PriceTable | None) -> JobResult:
    """``result`` with its cost under ``table`` (unchanged without one)."""
    if table is None:
        return result
    return result.model_copy(update={"cost": table.cost(result.usage, result.model)})


def load_optional(path: Path | None) -> PriceTable | None:
    """The table at ``path``, or None when no file is configured."""
    return load_prices(path) if path is not None else None
