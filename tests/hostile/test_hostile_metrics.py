"""A router's or server's metrics endpoint that misbehaves: the workers' reader of it gets no
reading, holds nothing, and the worker keeps working. A real aiohttp server on loopback, read by
the production wire."""

from __future__ import annotations

import asyncio

import pytest

from mrsa.backends.pressure import MAX_METRICS_BYTES, BackendPressure
from mrsa.domain import JobSpec, JobStatus
from mrsa.params import RSAParams
from tests.fakes import FakeBackend
from tests.hostile.server import Behaviour, HostileServer, huge, raw, reply, silent_then, trickle
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

HOSTILE: dict[str, Behaviour] = {
    "binary": raw(bytes(range(256)) * 8),
    "json": reply({"vllm:num_requests_waiting": 99}),
    "html error": raw(b"<html>502 Bad Gateway</html>", status=502),
    "nan": raw(b"vllm:num_requests_waiting NaN\n"),
    "negative": raw(b"vllm:num_requests_waiting -1e9\n"),
    "broken labels": raw(b'vllm:num_requests_waiting{model_name="m 99\n'),
    "status 500 with a queue": raw(b"vllm:num_requests_waiting 99\n", status=500),
    "declared huge": huge(MAX_METRICS_BYTES * 2, declared=True),
    "chunked huge": huge(MAX_METRICS_BYTES * 2, declared=False),
    "trickle": trickle(0.05),
    "silent": silent_then(30, raw(b"vllm:num_requests_waiting 99\n")),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_metrics_endpoint_gives_no_reading(server: HostileServer, name: str) -> None:
    server.metrics = HOSTILE[name]
    pressure = BackendPressure(f"{server.url}/metrics", max_waiting=0, timeout_s=0.5)
    try:
        assert await asyncio.wait_for(pressure.read_once(), 10) is None
        assert not pressure.holding and pressure.opened.is_set()
    finally:
        await pressure.aclose()


@pytest.mark.timeout(60)
async def test_a_worker_reading_garbage_keeps_working(server: HostileServer) -> None:
    server.metrics = raw(bytes(range(256)))
    pressure = BackendPressure(f"{server.url}/metrics", max_waiting=0, interval_s=0.02, timeout_s=0.5)
    backend = FakeBackend()
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)
    params = RSAParams(population=3, subset=2, rounds=1, budget=16, tail=4)
    reader = asyncio.create_task(pressure.run())
    try:
        async with InProcessRunner(backend, capacity=3, options=options) as runner:
            runner.worker.pressure = pressure
            result = await asyncio.wait_for(runner.solve(JobSpec(problem="1+1?", params=params)), 20)
        assert not reader.done()  # the reader loop survived every garbage reading
    finally:
        reader.cancel()
        await pressure.aclose()
    assert result.status == JobStatus.succeeded
    assert server.paths.count("/metrics") >= 2
