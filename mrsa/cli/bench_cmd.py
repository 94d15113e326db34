"""``mrsa bench``: sweeps of datasets × configurations × seeds, resumable, with live progress.

The flags, the progress display, the summary table and the exit codes are here; planning and
running the sweep is :mod:`evals.bench`'s."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mrsa.backends.base import BackendError
from mrsa.cli.common import EXIT_USAGE, err_console, fail, out_console, print_json, settings_from_flags
from mrsa.cli.options import BACKEND_FLAGS, GpuNameOpt, GpusOpt, QuietOpt, setting_flags
from mrsa.cli.settings import Settings
from mrsa.engine.limits import ContextBudgetError
from mrsa.params import PRESETS
from mrsa.servers.embedded import EmbeddedUnavailable
from mrsa.store.base import StoreUnavailable

if TYPE_CHECKING:
    from evals.report import ReportData
    from evals.sweep import SweepStats

EXIT_INTERRUPTED = 130


def parse_seeds(text: str) -> list[int]:
    """``2`` → seeds 0 and 1 (a count); ``0,3,7`` (or ``7,``) → exactly those seeds."""
    text = text.strip()
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        fail(f"seeds: {text!r} is not a count (2) or a list of seeds (0,3,7)", EXIT_USAGE)
    if not seeds or any(s < 0 for s in seeds):
        fail(f"seeds: {text!r} must name seeds ≥ 0", EXIT_USAGE)
    return list(dict.fromkeys(seeds))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_line(stats: SweepStats) -> str:
    return (
        f"units {stats.units_done}/{stats.units_total}"
        + (f" ({stats.units_failed} failed)" if stats.units_failed else "")
        + f" · candidates {stats.candidates_done}/{stats.candidates_total}"
        + f" · {stats.tokens_per_s:.1f} tok/s · ETA {_duration(stats.eta_s)} · elapsed {_duration(stats.elapsed)}"
        + (f" · correct {stats.correct_new}/{stats.candidates_new} new" if stats.candidates_new else "")
    )


async def _show_progress(stats: SweepStats, interval_s: float) -> None:
    """Live line on a terminal; otherwise one line every ``interval_s`` (logs, CI, tests)."""
    if err_console.is_terminal:
        with Live(progress_line(stats), console=err_console, refresh_per_second=2, transient=False) as live:
            while True:
                live.update(progress_line(stats))
                await asyncio.sleep(0.5)
    while True:
        await asyncio.sleep(interval_s)
        err_console.print(f"bench: {progress_line(stats)}", markup=False, soft_wrap=True)


def _summary(data: ReportData) -> Table:
    table = Table(title="Sweep summary (pass@1 and maj@N in %, 95% bootstrap CI over problems)")
    for col in ("configuration", "dataset", "runs", "round", "pass@1", "maj@N", "pass@N", "decode tok/run"):
        table.add_column(col, justify="left" if col in ("configuration", "dataset") else "right")
    for g in data.groups:
        for r in g.rounds:
            table.add_row(
                g.config,
                g.dataset,
                str(g.runs),
                str(r.round),
                f"{100 * r.pass1.value:.1f} [{100 * r.pass1.low:.1f}, {100 * r.pass1.high:.1f}]",
                f"{100 * r.maj.value:.1f}",
                f"{100 * r.pass_n.value:.1f}",
                f"{r.decode_tokens:,.0f}",
            )
    return table


@setting_flags(Settings, *BACKEND_FLAGS, "redis_url")
def bench(
    ctx: typer.Context,
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "--datasets",
            "-d",
            help="aime2024, aime2025, aime2026, hmmt_feb2025, hmmt_feb2026, a generated "
            "arith:LEVEL[:N[:SEED]] (e.g. arith:add1x1:81), or a JSONL path; repeatable.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created; an existing one resumes).")],
    preset: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Configuration preset ({', '.join(PRESETS)}); repeatable. "
            "Default: smoke on the embedded model, zaya1 with --backend."
        ),
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(help="Parameter grid on top of each preset, e.g. 'rounds=0,1;subset=1,2'."),
    ] = None,
    seeds: Annotated[str, typer.Option(help="A count (2 → seeds 0,1) or a list (0,3,7).")] = "1",
    limit: Annotated[int | None, typer.Option(help="Only the first N problems of each dataset.")] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="Jobs (problem × seed × config) in flight (default: enough to keep the server full)."
        ),
    ] = None,
    grade_timeout: Annotated[float, typer.Option(help="Grading time limit per answer, seconds.")] = 10.0,
    grade_workers: Annotated[int, typer.Option(help="Grading processes.")] = 2,
    progress_every: Annotated[
        float, typer.Option(help="Seconds between progress lines when stderr is not a terminal.")
    ] = 10.0,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Append every backend request/response to DIR/requests.jsonl."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    quiet: QuietOpt = False,
    gpus: GpusOpt = None,
    gpu_name: GpuNameOpt = None,
) -> None:
    """Run Markovian RSA over benchmark problems (datasets × presets/grid × seeds), grade every
    candidate, append records to RUN_DIR/records.jsonl as they finish, and resume when rerun."""
    from evals.bench import BenchInputError, bench_report, default_presets, plan_bench, run_bench
    from evals.records import RecordLogError
    from evals.rundir import ManifestConflict
    from evals.session import SessionOptions
    from evals.sweep import SweepStats

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its signal timeouts are off on purpose
    settings = settings_from_flags(Settings, ctx.params, ctx)  # the backend and store flags, over MRSA_*
    backend_url = settings.backend_url
    for name, value in (("jobs", jobs), ("limit", limit)):
        if value is not None and value < 1:
            fail(f"{name}: must be ≥ 1", EXIT_USAGE)
    if grade_timeout <= 0 or grade_workers < 1:
        fail("grade-timeout must be > 0 and grade-workers ≥ 1", EXIT_USAGE)
    if gpu_name is not None and gpus is None:
        fail("gpu-name: say how many with --gpus N too", EXIT_USAGE)
    seed_list = parse_seeds(seeds)
    try:
        plan = plan_bench(
            out,
            dataset,
            preset or default_presets(embedded=backend_url is None),
            grid,
            seed_list,
            limit,
            grade_timeout,
            settings.equivalence_max_chars,
        )
    except BenchInputError as exc:
        fail(str(exc), EXIT_USAGE)
    stats = SweepStats()
    session = SessionOptions(
        trace_dir=trace,
        jobs=jobs,
        grade_timeout_s=grade_timeout,
        grade_workers=min(grade_workers, os.cpu_count() or 1),
        gpus=gpus,
        gpu_name=gpu_name,
    )

    async def show_progress(stats: SweepStats) -> None:
        await _show_progress(stats, progress_every)

    try:
        run_bench(plan, session, settings, stats, None if quiet else show_progress)
    except KeyboardInterrupt:
        if not quiet:
            err_console.print(progress_line(stats), highlight=False)  # where it stopped
        fail(
            f"interrupted: {stats.candidates_new} new records kept in {plan.run.records.path}; "
            "rerun the same command to resume",
            EXIT_INTERRUPTED,
        )
    except (ContextBudgetError, ManifestConflict, RecordLogError) as exc:
        fail(str(exc), EXIT_USAGE)
    except (BackendError, EmbeddedUnavailable, StoreUnavailable) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    if not quiet and not json_out:
        err_console.print(f"bench: {progress_line(stats)}", markup=False, soft_wrap=True)
    data = bench_report(plan)
    if json_out:
        print_json(
            {
                "run_dir": str(out),
                "records": data.records,
                "new_records": stats.candidates_new,
                "units_complete": data.complete,
                "units_total": data.total,
                "units_failed": stats.units_failed,
                "errors": stats.errors,
                "groups": [g.model_dump(mode="json", exclude={"grid"}) for g in data.groups],
            }
        )
    else:
        # Piped output gets rich's 80 columns by default: too narrow for this table.
        wide = out_console if out_console.is_terminal else Console(width=140, highlight=False)
        wide.print(_summary(data))
        out_console.print(
            f"{data.records} records ({stats.candidates_new} new) in {plan.run.records.path}; "
            f"{data.complete}/{data.total} units complete. Report: mrsa report {out}",
            markup=False,
            soft_wrap=True,
        )
    for err in stats.errors:
        err_console.print(f"mrsa: error: {err}", markup=False)
    if stats.units_failed:
        raise typer.Exit(1)
