"""One ``mrsa bench`` session: open the runtime (store and backend, :func:`mrsa.runtime.open_runtime`),
merge this sweep into the run folder's manifest, record the session in it, and run the sweep.

The CLI (``mrsa/cli/bench_cmd.py``) parses flags into the runtime's settings (which backend, which
store, every backend setting) and :class:`SessionOptions` (what only a session has) and renders
progress; :mod:`evals.bench` plans the sweep (with :func:`plan_manifest` and
:func:`evals.sweep.plan_units`), calls :func:`run_session` and closes the session however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from evals.configs import SweepConfig
from evals.datasets import Dataset
from evals.grading import Grader
from evals.rundir import (
    BackendEntry,
    Manifest,
    RunDir,
    Session,
    dataset_entry,
    git_revision,
    merge,
    mrsa_version,
)
from evals.sweep import SweepStats, Unit, check_contexts, run_sweep
from mrsa.backends.base import Backend
from mrsa.engine.equivalence import FLOAT_ROUNDING
from mrsa.runtime import BackendOptions, RuntimeSettings, open_runtime
from mrsa.urls import redact


class SessionOptions(BaseModel):
    """What only a session has (the backend and the store come from the runtime's settings): its
    trace, how many jobs run at once, grading, and the hardware as the user states it."""

    trace_dir: Path | None = Field(None, description="Append every backend request/response here.")
    jobs: int | None = Field(None, description="Jobs in flight; None: enough to keep the server full.")
    grade_timeout_s: float = 10.0
    grade_workers: int = 2
    gpus: int | None = Field(None, description="GPUs serving the model, as the user states them.")
    gpu_name: str | None = None


def plan_manifest(
    configs: list[SweepConfig],
    datasets: list[Dataset],
    seeds: list[int],
    limit: int | None,
    grade_timeout_s: float,
    max_chars: int,
) -> Manifest:
    """The manifest this sweep asks for (merged into a run folder's own when it resumes);
    ``max_chars``: the size cap of a symbolically compared answer (``MRSA_EQUIVALENCE_MAX_CHARS``)."""
    return Manifest(
        seeds=seeds,
        configs=configs,
        datasets=[dataset_entry(d, limit) for d in datasets],
        grading={
            "timeout_s": grade_timeout_s,
            "float_rounding": FLOAT_ROUNDING,
            "max_chars": max_chars,
            "math_verify": importlib.metadata.version("math-verify"),
        },
    )


async def run_session(
    run: RunDir,
    plan: Manifest,
    units: Sequence[Unit],
    golds: dict[tuple[str, str], str],
    stats: SweepStats,
    options: SessionOptions,
    settings: RuntimeSettings,
    watch: Callable[[SweepStats], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run the session on the runtime of ``settings``; ``watch(stats)`` runs alongside the sweep
    (progress) and is cancelled when it ends. Raises :class:`~evals.rundir.ManifestConflict` when
    the run folder's manifest disagrees with ``plan``, ``ContextBudgetError`` when a configuration
    cannot fit the model's context, and the store's and backend's errors."""

    async def fits(backend: Backend) -> None:
        await check_contexts(backend, units)

    backend_options = BackendOptions(trace_dir=options.trace_dir)
    async with open_runtime(settings, backend=backend_options, check=fits) as runtime:
        backend, info = runtime.ready()
        store = runtime.store
        plan = plan.model_copy(update={"model": info.model})
        manifest = merge(run.load_manifest(), plan) if run.exists() else plan
        session = Session(
            started_at=time.time(),
            backend=BackendEntry(
                url=info.url,
                kind=info.kind,
                model=info.model,
                version=info.version,
                capacity=info.capacity,
                context_length=info.context_length,
            ),
            mrsa_version=mrsa_version(),
            git_revision=git_revision(),
            store="memory" if settings.redis_url is None else redact(settings.redis_url),
            gpus=options.gpus,
            gpu_name=options.gpu_name,
        )
        earlier = len(manifest.sessions)
        manifest.sessions.append(session)
        stats.session_started_at = session.started_at
        run.save_manifest(manifest)
        with Grader(workers=options.grade_workers, timeout_s=options.grade_timeout_s) as grader:
            watcher = asyncio.create_task(watch(stats)) if watch is not None else None
            try:
                await run_sweep(
                    backend,
                    units,
                    run.records,
                    grader,
                    golds,
                    stats,
                    store=store,
                    capacity=runtime.capacity,
                    max_jobs=options.jobs,
                    model=info.model,
                    namespace=f"{manifest.run_id}-{earlier}",
                    # A persistent store may still hold earlier sessions' unfinished jobs.
                    stale_namespaces=[f"{manifest.run_id}-{i}" for i in range(earlier)]
                    if settings.redis_url is not None
                    else [],
                    failures=run.failures,
                )
            finally:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
