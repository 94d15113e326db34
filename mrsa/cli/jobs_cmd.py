"""Client commands against a running API: ``mrsa submit``, ``status``, ``watch``, ``result``,
``cancel`` and ``list``.

They take ``--api URL`` / ``--api-key`` (or ``MRSA_API_URL`` / ``MRSA_API_KEY``) and ``--json``.
Exit codes: 0 done (or still running), 1 a failed or cancelled job, an API error or an unreachable
API, 2 bad input (refused locally or with a 422 by the server).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from rich.live import Live
from rich.table import Table

from mrsa.api.jobs.schemas import JobView
from mrsa.cli.api_client import ApiClient, ApiClientError
from mrsa.cli.common import EXIT_FAILURE, EXIT_USAGE, err_console, fail, out_console, print_json
from mrsa.cli.options import (
    FileOpt,
    ProblemArg,
    rsa_flags,
    setting_option,
)
from mrsa.cli.settings import ClientSettings, get_settings
from mrsa.cli.solve import Progress, build_params, read_problem, render_result
from mrsa.domain import JobStatus
from mrsa.params import DEFAULT_PRESET, PRESETS, RSAParams

ApiOpt = Annotated[str | None, setting_option(ClientSettings, "api_url")]
KeyOpt = Annotated[str | None, setting_option(ClientSettings, "api_key")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON on stdout (one object; watch: one per event).")
]
PRESET_HELP = f"Named parameter set: {', '.join(PRESETS)} (default {DEFAULT_PRESET})."
JobArg = Annotated[str, typer.Argument(help="The job id (from mrsa submit or mrsa list).")]


@contextlib.contextmanager
def api_client(api: str | None, api_key: str | None) -> Iterator[ApiClient]:
    """An :class:`ApiClient`; API errors become one-line messages (no traceback)."""
    settings = get_settings()
    client = ApiClient(api or settings.api_url, api_key or settings.api_key)
    try:
        yield client
    except ApiClientError as exc:
        api_failure(exc)
    finally:
        client.close()


def api_failure(exc: ApiClientError) -> NoReturn:
    fail(str(exc), EXIT_USAGE if exc.status == 422 else EXIT_FAILURE)


def _clean(value: dict[str, Any]) -> dict[str, Any]:
    """Drop unset (None) values, also inside nested dicts."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict):
            v = _clean(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


def _exit_for(status: JobStatus) -> None:
    if status in (JobStatus.failed, JobStatus.cancelled):
        raise typer.Exit(EXIT_FAILURE)


def print_status(job: JobView) -> None:
    p = job.progress
    done = f"{p.done}/{p.population}" if p.done is not None else f"{p.population} per round"
    say = out_console.print
    say(f"[bold]{job.id}[/]  {job.status.value}")
    say(f"round {p.round}/{p.rounds} · candidates {done} · created {_when(job.created_at)}")
    if job.answer is not None:
        say(f"[bold green]answer:[/] {job.answer}", soft_wrap=True)
    if job.error:
        say(f"[bold red]{job.status.value}:[/] {job.error}", soft_wrap=True)


@rsa_flags(RSAParams)
def submit(
    problem: ProblemArg = None,
    file: FileOpt = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    *,
    overrides: dict[str, Any],
    model: Annotated[str | None, typer.Option(help="Model id recorded on the job.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Resubmitting with the same key returns the same job.")
    ] = None,
    api: ApiOpt = None,
    api_key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job to the API (same parameters as solve; default preset zaya1) and print its id."""
    text = read_problem(problem, file)
    build_params(preset, False, overrides)  # refuse bad input locally
    body = _clean({"problem": text, "preset": preset, "params": overrides, "model": model})
    with api_client(api, api_key) as client:
        sent = client.submit(body, idempotency_key)
    if json_out:
        print_json(sent)
        return
    note = " (an earlier submission with this key)" if sent.replayed else ""
    out_console.print(f"{sent.id}{note}")
    err_console.print(f"{sent.status.value}; follow it with: mrsa watch {sent.id}")


def status(job_id: JobArg, api: ApiOpt = None, api_key: KeyOpt = None, json_out: JsonOpt = False) -> None:
    """Show a job's status and progress (exit 1 when it failed or was cancelled)."""
    with api_client(api, api_key) as client:
        job = client.job(job_id)
    if json_out:
        print_json(job)
    else:
        print_status(job)
    _exit_for(job.status)


def watch(job_id: JobArg, api: ApiOpt = None, api_key: KeyOpt = None, json_out: JsonOpt = False) -> None:
    """Follow a job live (round, candidates, tokens/s, votes) until it ends, then show its result."""
    with api_client(api, api_key) as client:
        job = client.job(job_id)
        progress = Progress(job.params)
        progress.started = time.monotonic() - max(0.0, time.time() - job.created_at)
        live = (
            Live(progress.render(), console=err_console, refresh_per_second=4)
            if not json_out and err_console.is_terminal
            else None
        )
        with live if live is not None else contextlib.nullcontext():
            # The server ends the stream where its follow() of the job ends (after `done`).
            for event in client.events(job_id):
                if json_out:
                    print_json(event)
                    continue
                progress.on_event(event)
                if live is not None:
                    live.update(progress.render())
                elif event.type in ("round", "done") or (
                    event.type == "candidate" and progress.done == job.params.stage_population(progress.round)
                ):
                    err_console.print(progress.render())
        job = client.job(job_id)
        if not job.status.terminal:
            fail(f"the event stream ended but job {job_id} is {job.status.value}; run mrsa watch again")
        if not json_out:
            render_result(client.result(job_id))
    _exit_for(job.status)


def result(
    job_id: JobArg,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end first.")] = False,
    api: ApiOpt = None,
    api_key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a finished job's answer, votes and per-round stats (exit 1 when it did not succeed)."""
    with api_client(api, api_key) as client:
        if wait:
            for _ in client.events(job_id):
                pass
        res = client.result(job_id)
    if json_out:
        print_json(res)
    else:
        render_result(res)
    _exit_for(res.status)


def cancel(job_id: JobArg, api: ApiOpt = None, api_key: KeyOpt = None, json_out: JsonOpt = False) -> None:
    """Cancel a queued or running job."""
    with api_client(api, api_key) as client:
        job = client.cancel(job_id)
    if json_out:
        print_json(job)
    else:
        out_console.print(f"{job.id} {job.status.value}")


def list_jobs(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 20,
    api: ApiOpt = None,
    api_key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List your jobs, newest first."""
    with api_client(api, api_key) as client:
        found = client.list(limit)
    if json_out:
        print_json(found)
        return
    table = Table()
    for col in ("id", "status", "round", "created", "answer / error", "problem"):
        table.add_column(col)
    for job in found.jobs:
        outcome = job.answer if job.answer is not None else (job.error or "")
        table.add_row(
            job.id,
            job.status.value,
            f"{job.progress.round}/{job.progress.rounds}",
            _when(job.created_at),
            outcome[:40],
            job.problem_preview[:40].replace("\n", " "),
        )
    out_console.print(table)
