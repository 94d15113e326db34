"""Waiting for a job that a worker process runs."""

from __future__ import annotations

import asyncio
import time

from mrsa.domain import Job
from mrsa.store.base import Store
from testkit.processes import Child


async def wait_for_job(store: Store, job_id: str, worker: Child, within_s: float) -> Job:
    """Poll ``store`` until the job is terminal and return it; fail with the worker's log tail if
    the worker exits first or ``within_s`` passes."""
    deadline = time.monotonic() + within_s
    while True:
        got = await store.get_job(job_id)
        assert got is not None
        if got.status.terminal:
            return got
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_tail()}"
        assert time.monotonic() < deadline, f"job not done in {within_s:.0f} s:\n{worker.log_tail()}"
        await asyncio.sleep(0.2)
