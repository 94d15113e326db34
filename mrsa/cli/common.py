"""Shared CLI plumbing: one-line errors (exit 2 for bad input, 1 for failures), JSON output, and
settings from the environment with a command's flags on top."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape

from mrsa.env import describe_settings_error

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``mrsa: error: message`` on stderr (no traceback) and exit with ``code``."""
    # The message is text, not markup: "[/<db>]" in a URL's syntax must not be read as a closing tag.
    err_console.print(f"[bold red]mrsa: error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


S = TypeVar("S", bound=BaseSettings)


def settings_from_flags(model: type[S], flags: Mapping[str, Any], ctx: typer.Context | None = None) -> S:
    """``model`` read from the environment (``MRSA_*``) with the flags that were given on top
    (pydantic-settings ranks init arguments above the environment, the environment above defaults).

    ``flags`` maps the settings' fields to the command's values, ``None`` for a
    flag not given; entries that are no field of ``model`` (a command's other parameters) are left
    out. A command whose parameters are named after the fields they set passes ``ctx.params`` and
    ``ctx``; then a bad value exits 2 naming its flag as the user typed it (one from the
    environment is named by its variable).
    """
    given = {f: v for f, v in flags.items() if v is not None and f in model.model_fields}
    try:
        return model(**given)
    except ValidationError as exc:
        fail(describe_settings_error(exc, _flag_names(given, ctx)), EXIT_USAGE)


def _flag_names(fields: Mapping[str, Any], ctx: typer.Context | None) -> dict[str, str]:
    """Each given field's flag without its dashes (``worker_reclaim_idle_s`` → ``reclaim-idle``)."""
    opts = {p.name: p.opts[0] for p in ctx.command.params if p.opts} if ctx is not None else {}
    return {field: opts.get(field, field).lstrip("-").replace("_", "-") for field in fields}


def print_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    """One JSON document on stdout and nothing else."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
