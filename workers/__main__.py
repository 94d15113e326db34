"""``python -m workers``: the same as ``mrsa worker`` (see ``--help``)."""

from __future__ import annotations

import typer

from mrsa.cli.worker_cmd import worker

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(worker)

if __name__ == "__main__":
    app(prog_name="python -m workers")
