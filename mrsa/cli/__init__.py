"""The ``mrsa`` command line (typer). Each command group lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from mrsa.cli import jobs_cmd
from mrsa.cli.backend_cmd import backend
from mrsa.cli.bench_cmd import bench
from mrsa.cli.grade_cmd import grade
from mrsa.cli.report_cmd import report
from mrsa.cli.serve_cmd import serve
from mrsa.cli.solve import solve
from mrsa.cli.worker_cmd import worker
from mrsa.version import version_line

app = typer.Typer(
    name="mrsa",
    help="Markovian RSA: recursive self-aggregation of reasoning tails, as a CLI, a job service and benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print mrsa's version (with the git revision when run from a checkout) and exit.",
        ),
    ] = False,
) -> None:
    """Markovian RSA: recursive self-aggregation of reasoning tails, as a CLI, a job service and benchmarks."""


app.command()(solve)
app.command()(backend)
app.command()(worker)
app.command()(serve)
for command in (jobs_cmd.submit, jobs_cmd.status, jobs_cmd.watch, jobs_cmd.result, jobs_cmd.cancel):
    app.command()(command)
app.command("list")(jobs_cmd.list_jobs)
app.command()(bench)
app.command()(report)
app.command(context_settings={"ignore_unknown_options": True})(grade)  # negative golds: -984


def main() -> None:
    app()
