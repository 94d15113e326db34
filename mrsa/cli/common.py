"""Shared CLI plumbing: one-line errors (exit 2 for bad input, 1 for failures), JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``mrsa: error: message`` on stderr (no traceback) and exit with ``code``."""
    err_console.print(f"[bold red]mrsa: error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def print_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    """One JSON document on stdout and nothing else."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
