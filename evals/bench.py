"""One ``mrsa bench`` invocation, from what was asked to the report data: :func:`plan_bench` turns
the datasets, presets, grid, seeds and run folder into a :class:`BenchPlan` (refusing, with
:class:`BenchInputError`, what cannot run before any server starts); :func:`run_bench` runs its
session (or nothing, when every unit is already recorded) and closes the session in the manifest
however it ends; :func:`bench_report` computes the summary from the run folder.

The CLI (``mrsa/cli/bench_cmd.py``) parses the flags, renders progress and the summary, and maps
the errors to exit codes; :mod:`evals.session` opens the store and backend and runs the sweep.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from evals import session as sessions
from evals.configs import ConfigError, build_configs
from evals.datasets import DatasetError, load_dataset
from evals.grading import Grader
from evals.report import ReportData, compute
from evals.rundir import Manifest, ManifestConflict, RunDir, merge
from evals.sweep import SweepStats, Unit, plan_units
from mrsa.backends.base import BackendError
from mrsa.runtime import RuntimeSettings
from mrsa.servers.embedded import EmbeddedUnavailable
from mrsa.store.base import StoreUnavailable


class BenchInputError(ValueError):
    """The sweep asked for cannot run (a dataset, preset, grid or run folder is wrong): a usage
    error, found before any server starts."""


@dataclass(frozen=True)
class BenchPlan:
    """What one invocation runs: the run folder, the manifest it asks for, its units and the gold
    answers (by dataset and problem id)."""

    run: RunDir
    manifest: Manifest
    units: list[Unit]
    golds: dict[tuple[str, str], str]
    grade_timeout_s: float

    def all_recorded(self) -> bool:
        """Every unit of the plan has all its candidates in the run folder already."""
        if not self.run.exists():
            return False
        have = Counter(record.unit for record in self.run.records.load().values())
        return all(have[u.key] >= u.total for u in self.units)


def default_presets(embedded: bool) -> list[str]:
    """The presets of a sweep that names none: ``smoke`` on the embedded model, ``zaya1`` otherwise."""
    return ["smoke" if embedded else "zaya1"]


def plan_bench(
    out: Path,
    datasets: Sequence[str],
    presets: Sequence[str],
    grid: str | None,
    seeds: list[int],
    limit: int | None,
    grade_timeout_s: float,
    max_chars: int,
) -> BenchPlan:
    """Load the datasets, build the configurations and check the run folder (an existing one must
    be a run folder whose manifest this sweep can extend). ``max_chars``: the size cap of a
    symbolically compared answer. Raises :class:`BenchInputError`."""
    try:
        loaded = [load_dataset(d) for d in dict.fromkeys(datasets)]
    except DatasetError as exc:
        raise BenchInputError(str(exc)) from exc
    if len({d.name for d in loaded}) != len(loaded):
        raise BenchInputError("dataset: two datasets share a name; rename one of the files")
    try:
        configs = build_configs(presets, grid)
    except ConfigError as exc:
        raise BenchInputError(str(exc)) from exc
    run = RunDir(out)
    if out.exists() and not out.is_dir():
        raise BenchInputError(f"out: {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not run.exists():
        raise BenchInputError(f"out: {out} is not empty and holds no manifest.json (not a run folder)")
    manifest = sessions.plan_manifest(configs, loaded, seeds, limit, grade_timeout_s, max_chars)
    if run.exists():
        try:
            merge(run.load_manifest(), manifest)  # fail before starting any server
        except ManifestConflict as exc:
            raise BenchInputError(str(exc)) from exc
        except (ValidationError, ValueError) as exc:
            raise BenchInputError(
                f"out: cannot read {run.manifest_path}: {str(exc).splitlines()[0]}"
            ) from exc
    problems = {d.name: d.problems[:limit] if limit else d.problems for d in loaded}
    golds = {(d.name, p.id): p.answer for d in loaded for p in d.problems}
    units = plan_units(configs, problems, seeds)
    return BenchPlan(run, manifest, units, golds, grade_timeout_s)


def run_bench(
    plan: BenchPlan,
    options: sessions.SessionOptions,
    settings: RuntimeSettings,
    stats: SweepStats,
    watch: Callable[[SweepStats], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run the plan's session (``watch(stats)`` alongside it, as in :func:`evals.session.run_session`);
    when every unit is already recorded, no backend is opened. The manifest's session is closed
    as ``interrupted`` (Ctrl-C), ``failed`` (the backend or store failed, or a unit failed) or
    ``completed``; the errors are re-raised for the caller to report."""

    def end(status: Literal["completed", "interrupted", "failed"]) -> None:
        plan.run.end_session(stats.session_started_at, status, stats.candidates_new, stats.units_failed)

    try:
        if plan.all_recorded():
            stats.units_total = stats.units_done = len(plan.units)
            stats.candidates_total = stats.candidates_done = sum(u.total for u in plan.units)
        else:
            asyncio.run(
                sessions.run_session(
                    plan.run, plan.manifest, plan.units, plan.golds, stats, options, settings, watch
                )
            )
    except KeyboardInterrupt:
        end("interrupted")
        raise
    except (BackendError, EmbeddedUnavailable, StoreUnavailable):
        end("failed")
        raise
    end("failed" if stats.units_failed else "completed")


def bench_report(plan: BenchPlan) -> ReportData:
    """The summary of the run folder after the session: every record, not only this session's."""
    with Grader(workers=1, timeout_s=plan.grade_timeout_s) as grader:
        return compute(plan.run, grader)
