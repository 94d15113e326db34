"""One ``mrsa bench`` session: open the store and the backend, merge this sweep into the run
folder's manifest, record the session in it, and run the sweep.

The CLI (``mrsa/cli/bench_cmd.py``) parses flags into :class:`SessionOptions` and renders
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
from mrsa.backends.factory import open_backend
from mrsa.backends.http import HttpOptions
from mrsa.engine.equivalence import FLOAT_ROUNDING
from mrsa.settings import Settings
from mrsa.store.opening import open_store
from mrsa.urls import redact


class SessionOptions(BaseModel):
    """How a session runs: the backend, the store, and how much runs at once."""

    backend_url: str | None = Field(None, description="Inference server; None: the embedded model.")
    backend_kind: str = "auto"
    model: str | None = None
    tokenizer: Path | None = Field(None, description="Triton: the served model's tokenizer.")
    http: HttpOptions = Field(default_factory=HttpOptions)
    trace_dir: Path | None = Field(None, description="Append every backend request/response here.")
    redis_url: str | None = Field(None, description="Run the jobs through this Redis; None: in memory.")
    concurrency: int | None = Field(None, description="Requests in flight; None: the server's capacity.")
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
    settings: Settings,
    watch: Callable[[SweepStats], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run the session; ``watch(stats)`` runs alongside the sweep (progress) and is cancelled when
    it ends. Raises :class:`~evals.rundir.ManifestConflict` when the run folder's manifest
    disagrees with ``plan``, ``ContextBudgetError`` when a configuration cannot fit the model's
    context, and the store's and backend's errors."""
    async with contextlib.AsyncExitStack() as stack:
        # The store before the backend: a wrong Redis URL fails before a model starts.
        store = await stack.enter_async_context(open_store(options.redis_url, settings))
        backend = await stack.enter_async_context(
            open_backend(
                options.backend_url,
                options.backend_kind,
                model=options.model,
                options=options.http,
                trace_dir=options.trace_dir,
                tokenizer=options.tokenizer,
            )
        )
        info = await backend.info()
        await check_contexts(backend, units)
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
            store="memory" if options.redis_url is None else redact(options.redis_url),
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
                    capacity=options.concurrency or info.capacity,
                    max_jobs=options.jobs,
                    model=info.model,
                    namespace=f"{manifest.run_id}-{earlier}",
                    # A persistent store may still hold earlier sessions' unfinished jobs.
                    stale_namespaces=[f"{manifest.run_id}-{i}" for i in range(earlier)]
                    if options.redis_url is not None
                    else [],
                    failures=run.failures,
                )
            finally:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
