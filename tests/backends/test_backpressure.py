"""Backpressure from a router's or server's Prometheus metrics: the reading, the hold, and a worker
that takes no new tasks while the backend's queue is long (hostile endpoints: tests/hostile)."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrsa.backends.pressure import BackendPressure, waiting_requests
from mrsa.backends.wire import MockWire, WireRequest, WireResponse
from mrsa.domain import JobSpec, JobStatus
from mrsa.params import RSAParams
from testkit.simulator.process import running_simulator
from tests.fakes import FakeBackend
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions
from workers.settings import WorkerSettings
from workers.worker_process import backend_pressure

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 64.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 12.0
vllm:num_requests_waiting{engine="1",model_name="m"} 30.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 0.0
vllm:num_requests_waiting_total_bogus this line is not a sample at all {{{
"""


def test_waiting_sums_the_series_of_the_first_metric_present() -> None:
    # Both engines' queues count; the malformed line of another metric spoils nothing.
    assert waiting_requests(VLLM) == 42.0
    both = VLLM + "sglang:num_queue_reqs 7\n"
    assert waiting_requests(both, ["sglang:num_queue_reqs", "vllm:num_requests_waiting"]) == 7.0
    assert waiting_requests('inference_pool_average_queue_size{name="pool"} 3.5\n') == 3.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "vllm:num_requests_running 3\n",  # not the queue
        "vllm:num_requests_waiting NaN\n",
        "vllm:num_requests_waiting -4\n",
        "vllm:num_requests_waiting +Inf\n",
        "vllm:num_requests_waiting 1e300\n",
        'vllm:num_requests_waiting{model_name="m" 5\n',  # broken labels
        "vllm:num_requests_waiting five\n",
        "<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_no_reading_from_garbage(text: str) -> None:
    assert waiting_requests(text) is None


@given(st.text(max_size=300))
def test_any_text_reads_as_a_queue_length_or_none(text: str) -> None:
    value = waiting_requests("vllm:num_requests_waiting" + text)
    assert value is None or (math.isfinite(value) and value >= 0)


class Endpoint:
    """A metrics endpoint on a MockWire whose queue length the test sets (None: answers 500)."""

    def __init__(self, waiting: float | None = 0) -> None:
        self.waiting = waiting
        self.reads = 0

    def __call__(self, request: WireRequest) -> WireResponse:
        self.reads += 1
        if self.waiting is None:
            return WireResponse(500, {}, b"oops")
        return WireResponse(200, {}, f"vllm:num_requests_waiting {self.waiting}\n".encode())


async def test_the_hold_follows_the_queue_and_fails_open() -> None:
    endpoint = Endpoint(50)
    pressure = BackendPressure("http://router/metrics", max_waiting=32, wire=MockWire(endpoint))
    assert not pressure.holding and pressure.opened.is_set()  # nothing read yet: open
    assert await pressure.read_once() == 50
    assert pressure.holding and not pressure.opened.is_set()
    endpoint.waiting = 32  # at the limit: open again
    await pressure.read_once()
    assert not pressure.holding and pressure.opened.is_set()
    endpoint.waiting = 100
    await pressure.read_once()
    assert pressure.holding
    endpoint.waiting = None  # the endpoint breaks: no reading, no hold
    assert await pressure.read_once() is None
    assert not pressure.holding and pressure.opened.is_set()


async def test_a_stale_reading_stops_holding() -> None:
    pressure = BackendPressure(
        "http://router/metrics", max_waiting=0, interval_s=0.02, timeout_s=0.02, wire=MockWire(Endpoint(5))
    )
    await pressure.read_once()
    assert pressure.holding
    assert pressure.fresh_s == pytest.approx(0.06)
    await asyncio.sleep(0.1)  # longer than an attempt and an interval without a reading
    assert not pressure.holding


async def test_a_worker_takes_no_tasks_while_the_backend_queue_is_long() -> None:
    endpoint = Endpoint(100)
    pressure = BackendPressure(
        "http://router/metrics", max_waiting=10, interval_s=0.02, wire=MockWire(endpoint)
    )
    backend = FakeBackend()
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)
    params = RSAParams(population=2, subset=1, rounds=0, budget=16, tail=4)
    async with InProcessRunner(backend, capacity=2, options=options) as runner:
        runner.worker.pressure = pressure
        await pressure.read_once()
        # The runner's worker was started before the pressure was set: restart its side loop.
        reader = asyncio.create_task(pressure.run())
        await asyncio.sleep(0.1)  # a take that began before the reading has returned (empty)
        try:
            job = await runner.submit(JobSpec(problem="1+1?", params=params))
            await asyncio.sleep(0.3)
            assert backend.calls == []  # held: the tasks stay queued
            assert endpoint.reads >= 5
            endpoint.waiting = 3
            result = await asyncio.wait_for(runner.wait(job.id), 10)
        finally:
            reader.cancel()
    assert result.status == JobStatus.succeeded and len(backend.calls) == 2


def test_worker_settings_build_the_reader() -> None:
    base = {"redis_url": "redis://127.0.0.1:9/0"}
    assert backend_pressure(WorkerSettings(**base)) is None
    pressure = backend_pressure(
        WorkerSettings(
            **base,
            backend_metrics_url="http://router:8080/metrics",
            backend_max_waiting=5,
            backend_waiting_metrics="sglang:num_queue_reqs, vllm:num_requests_waiting",
        )
    )
    assert pressure is not None
    assert pressure.max_waiting == 5
    assert pressure.names == ("sglang:num_queue_reqs", "vllm:num_requests_waiting")


@pytest.mark.timeout(60)
async def test_the_simulators_real_queue_holds_and_releases() -> None:
    """vLLM's metric from the simulator's /metrics: a server with one slot and six requests has a
    queue of five; once they are done it is empty again."""
    flags = ["--max-num-seqs=1", "--step-base-ms=8", "--median-tokens=40", "--runaway-share=0"]
    with running_simulator(flags) as url:
        pressure = BackendPressure(f"{url}/metrics", max_waiting=2, interval_s=0.05)
        body = {"model": "mrsa-sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                flood = [
                    asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=body))
                    for _ in range(6)
                ]
                for _ in range(100):
                    if (await pressure.read_once() or 0) >= 3:
                        break
                    await asyncio.sleep(0.02)
                assert pressure.holding
                replies = await asyncio.gather(*flood)
                assert all(r.status_code == 200 for r in replies)
            assert await pressure.read_once() == 0
            assert not pressure.holding
        finally:
            await pressure.aclose()
