"""``mrsa solve``: run Markovian RSA on one problem, in-process, with live progress."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.live import Live
from rich.table import Table

from mrsa.backends.base import Backend, BackendError
from mrsa.cli.common import EXIT_USAGE, err_console, fail, out_console, print_json, settings_from_flags
from mrsa.cli.embedded_note import embedded_note
from mrsa.cli.options import BACKEND_FLAGS, FileOpt, ProblemArg, QuietOpt, rsa_flags, setting_flags
from mrsa.cli.settings import Settings
from mrsa.domain import Event, JobResult, JobSpec, JobStatus
from mrsa.engine.limits import ContextBudgetError, check_context
from mrsa.engine.prompts import UnknownPromptSetError, check_prompt_set
from mrsa.params import PRESETS, RSAParams, UnknownPresetError, describe_validation_error, resolve_params
from mrsa.prices import PriceFileError, load_optional, priced
from mrsa.runtime import BackendOptions, RuntimeSettings, open_runtime
from mrsa.servers.embedded import EmbeddedUnavailable
from mrsa.store.base import StoreUnavailable

PRESET_HELP = (
    f"Named parameter set: {', '.join(PRESETS)}. Default: smoke on the embedded model, zaya1 with --backend."
)


def build_params(preset: str | None, embedded: bool, overrides: dict[str, Any]) -> RSAParams:
    """Resolve preset + flags, exiting 2 with a one-line message naming the field on bad input."""
    try:
        params = resolve_params(preset or ("smoke" if embedded else None), overrides)
        check_prompt_set(params.prompts)
    except UnknownPresetError as exc:
        fail(str(exc), EXIT_USAGE)
    except UnknownPromptSetError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValidationError as exc:
        fail(describe_validation_error(exc), EXIT_USAGE)
    return params


def read_problem(problem: str | None, file: Path | None) -> str:
    if file is not None:
        if problem is not None:
            fail("give the problem as an argument or with --file, not both", EXIT_USAGE)
        try:
            problem = file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"--file: cannot read {file}: {exc.strerror}", EXIT_USAGE)
    if problem is not None and problem.strip() == "-":
        problem = sys.stdin.read()
    if problem is None or not problem.strip():
        fail("problem: give a non-empty problem (argument, --file PATH, or - for stdin)", EXIT_USAGE)
    return problem.strip()


class Progress:
    """Live progress: round, candidates done of N, tokens/s and the current vote distribution."""

    def __init__(self, params: RSAParams) -> None:
        self.params = params
        self.round = 0
        self.done = 0
        self.decode = 0
        self.started = time.monotonic()
        self.answers: dict[str, int] = {}
        self.status = "starting"

    def on_event(self, event: Event) -> None:
        if event.type == "candidate":
            if event.round != self.round:
                self.round, self.answers = event.round or 0, {}
            self.done = event.done or self.done
            self.decode += event.decode_tokens or 0
            key = event.answer if event.answer is not None else "(none)"
            self.answers[key] = self.answers.get(key, 0) + 1
        elif event.type == "round":
            self.round, self.done, self.answers = event.round or 0, 0, {}
        elif event.type in ("status", "done") and event.status is not None:
            self.status = event.status.value

    def render(self) -> Table:
        elapsed = max(1e-6, time.monotonic() - self.started)
        table = Table.grid(padding=(0, 2))
        table.add_row(
            f"[bold]round[/] {self.round}/{self.params.rounds}",
            f"[bold]candidates[/] {self.done}/{self.params.stage_population(self.round)}",
            f"[bold]tokens/s[/] {self.decode / elapsed:.1f}",
            f"[bold]elapsed[/] {elapsed:.0f}s",
        )
        top = sorted(self.answers.items(), key=lambda kv: -kv[1])[:5]
        table.add_row("[bold]votes[/] " + ("  ".join(f"{a[:24]}×{n}" for a, n in top) or "—"))
        return table


def render_result(result: JobResult) -> None:
    stats = Table(title="Rounds", show_lines=False)
    columns = ("round", "candidates", "finished", "truncated", "decode tok", "prompt tok", "cached tok")
    for col in (*columns, "top answers"):
        stats.add_column(col, justify="right" if col not in ("top answers",) else "left")
    for r in result.rounds:
        top = ", ".join(f"{v.answer[:20]}×{v.count}" for v in r.votes[:3]) or "—"
        finished = sum(1 for c in r.candidates if c.finish_reason == "stop")
        stats.add_row(
            str(r.index),
            str(len(r.candidates)),
            str(finished),
            str(r.truncated),
            str(r.usage.decode_tokens),
            str(r.usage.prompt_tokens),
            str(r.usage.cached_prompt_tokens),
            top,
        )
    out_console.print(stats)
    votes = Table(title="Final votes")
    votes.add_column("answer")
    votes.add_column("votes", justify="right")
    votes.add_column("finished", justify="right")
    for v in result.votes:
        votes.add_row(v.answer, str(v.count), str(v.finished))
    if result.votes:
        out_console.print(votes)
    u = result.usage
    out_console.print(
        f"decode tokens {u.decode_tokens} · prompt tokens {u.prompt_tokens} (cached "
        f"{u.cached_prompt_tokens}) · requests {u.requests} · {result.elapsed_s:.1f}s"
    )
    if result.cost is not None:
        out_console.print(f"cost {result.cost.line()}")
    stop = result.early_stop
    if stop is not None:
        why = (
            f"{100 * stop.agreement:.0f}% of the finished candidates agree"
            if stop.reason == "converged"
            else "the next round would exceed the token budget"
        )
        out_console.print(
            f"stopped early after round {stop.after_round} ({stop.reason}: {why}); "
            f"{stop.rounds_skipped} round(s) skipped, about {stop.decode_tokens_saved_estimate} decode "
            "tokens saved (estimate)"
        )
    if result.status != JobStatus.succeeded:
        out_console.print(f"[bold red]{result.status.value}[/]: {result.error}")
    else:
        out_console.print(
            f"[bold green]answer:[/] {result.answer if result.answer is not None else '(no answer)'}"
        )


async def _solve(
    spec: JobSpec, settings: RuntimeSettings, trace_dir: Path | None, show_progress: bool
) -> JobResult:
    """Run ``spec`` on the runtime of ``settings`` (:func:`mrsa.runtime.open_runtime`): in memory,
    or through Redis when ``settings.redis_url`` is set."""
    from workers.inprocess import InProcessRunner

    async def fits(backend: Backend) -> None:
        await check_context(backend, spec)

    async with open_runtime(settings, backend=BackendOptions(trace_dir=trace_dir), check=fits) as runtime:
        backend, info = runtime.ready()
        if spec.model is None and info.model is not None:
            spec = spec.model_copy(update={"model": info.model})
        store, capacity = runtime.store, runtime.capacity
        async with InProcessRunner(backend, store, capacity=capacity) as runner:
            progress = Progress(spec.params)
            if not show_progress:
                return await runner.solve(spec)
            if err_console.is_terminal:
                with Live(progress.render(), console=err_console, refresh_per_second=4) as live:

                    def update(event: Event) -> None:
                        progress.on_event(event)
                        live.update(progress.render())

                    return await runner.solve(spec, update)

            def log_line(event: Event) -> None:
                progress.on_event(event)
                if event.type in ("round", "done") or (
                    event.type == "candidate"
                    and progress.done == spec.params.stage_population(progress.round)
                ):
                    err_console.print(progress.render())

            return await runner.solve(spec, log_line)


@setting_flags(Settings, *BACKEND_FLAGS, "redis_url", "prices_file")
@rsa_flags(RSAParams)
def solve(
    ctx: typer.Context,
    problem: ProblemArg = None,
    file: FileOpt = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    *,
    overrides: dict[str, Any],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (the result) on stdout.")
    ] = False,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Write every backend request/response to DIR.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Solve one problem with Markovian RSA and print the answer with per-round stats."""
    settings = settings_from_flags(Settings, ctx.params, ctx)  # the backend flags, over MRSA_*
    text = read_problem(problem, file)
    params = build_params(preset, settings.backend_url is None, overrides)
    spec = JobSpec(problem=text, params=params, model=settings.model)
    try:
        prices = load_optional(settings.prices_file)
    except PriceFileError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        result = asyncio.run(_solve(spec, settings, trace, show_progress=not (quiet or json_out)))
    except KeyboardInterrupt:
        fail("cancelled (Ctrl-C); the embedded server was stopped", 130)
    except ContextBudgetError as exc:
        fail(str(exc), EXIT_USAGE)
    except (BackendError, EmbeddedUnavailable, StoreUnavailable) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    result = priced(result, prices)
    if json_out:
        print_json(result)
    else:
        render_result(result)
        if settings.backend_url is None:
            out_console.print(embedded_note(problem, file), markup=False, soft_wrap=True)
    if result.status != JobStatus.succeeded:
        raise typer.Exit(1)
