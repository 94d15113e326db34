"""A backend that goes away is an outage, not a job error: the worker holds its tasks and retries
them until the backend is back (a vLLM restart takes minutes), and fails the job only once the
backend has been out for the hold time. Against a real server process (the simulator) that is
stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.domain import JobStatus
from testkit.simulator.process import SimulatorProcess
from tests.support.builders import job_spec
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

FLAGS = ["--max-num-seqs=4", "--step-base-ms=0.2", "--median-tokens=40", "--max-model-len=4096"]
# The client's own retry window: two retries of at most 0.1 s. The outages below last many times
# longer; before the hold, every job that met one failed within this window.
CLIENT = HttpOptions(max_retries=2, backoff_s=0.05, backoff_cap_s=0.1, connect_timeout_s=2.0)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess(FLAGS, tmp_path / "simulator.log")
    sim.start(timeout_s=60.0)
    try:
        yield sim
    finally:
        sim.stop()


spec = partial(
    job_spec, "What is 6*7?", {"population": 2, "subset": 1, "rounds": 1, "budget": 48, "tail": 8, "seed": 5}
)


def options(hold_s: float) -> WorkerOptions:
    return WorkerOptions(
        block_ms=20,
        cancel_check_s=0.1,
        heartbeat_s=0.2,
        shutdown_grace_s=2.0,
        backoff_s=0.2,
        backoff_cap_s=0.5,
        backend_hold_s=hold_s,
    )


async def test_a_backend_restart_longer_than_the_retry_window_costs_time_not_the_job(
    simulator: SimulatorProcess,
) -> None:
    backend = OpenAICompatibleBackend(simulator.url, dialect="vllm", options=CLIENT)
    try:
        await backend.info()
        async with InProcessRunner(backend, capacity=2, options=options(hold_s=120.0)) as runner:
            warm = await asyncio.wait_for(runner.solve(spec()), 60)
            assert warm.status == JobStatus.succeeded, warm.error
            simulator.stop()
            job = await runner.submit(spec())
            down = time.monotonic()
            await asyncio.sleep(3.0)  # > 10x the client's whole retry window
            held = await runner.store.get_job(job.id)
            assert held is not None and not held.status.terminal, held.error
            assert runner.worker.in_flight >= 1  # held, not dropped
            await asyncio.to_thread(simulator.start)
            result = await asyncio.wait_for(runner.wait(job.id), 60)
            assert result.status == JobStatus.succeeded, result.error
            assert time.monotonic() - down >= 3.0
            assert len(result.answers) == 2
            after = await asyncio.wait_for(runner.solve(spec()), 60)  # and the worker takes new work
            assert after.status == JobStatus.succeeded
    finally:
        await backend.aclose()


async def test_a_backend_out_for_longer_than_the_hold_fails_the_job_saying_so(
    simulator: SimulatorProcess,
) -> None:
    backend = OpenAICompatibleBackend(simulator.url, dialect="vllm", options=CLIENT)
    try:
        await backend.info()
        simulator.stop()
        async with InProcessRunner(backend, capacity=2, options=options(hold_s=1.5)) as runner:
            started = time.monotonic()
            result = await asyncio.wait_for(runner.solve(spec()), 60)
            elapsed = time.monotonic() - started
    finally:
        await backend.aclose()
    assert result.status == JobStatus.failed
    assert result.error is not None and simulator.url in result.error and "cannot connect" in result.error
    assert "the backend stayed out for" in result.error and "(backend hold)" in result.error
    assert 1.5 <= elapsed < 30.0


def test_the_default_hold_survives_a_vllm_restart() -> None:
    """vLLM takes minutes to restart with a large model: the default holds ten."""
    assert WorkerOptions().backend_hold_s == 600.0
