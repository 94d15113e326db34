"""How settings meet the environment: the ``MRSA_`` prefix every settings group reads its fields
under, and errors that name a bad value the way the user gave it (flag or variable)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

ENV_PREFIX = "MRSA_"


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return f"{ENV_PREFIX}{field}".upper()


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
