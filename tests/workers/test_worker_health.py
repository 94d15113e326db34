"""The worker's probe endpoints (workers/health.py), which deploy/'s worker pods use: ``/healthz``
says whether the event loop turns, ``/readyz`` whether the worker is connected and taking tasks,
everything else serves the metrics as before."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import mrsa.telemetry  # noqa: F401  (registers the worker's metrics in the default registry)
from mrsa.servers.server_process import free_port
from testkit.processes import child_processes, clean_env
from testkit.simulator.process import SimulatorProcess
from tests.plugins.redis_server import RedisServer
from workers.health import WorkerHealth, start_health_server

SIM_FLAGS = ["--max-num-seqs=2", "--step-base-ms=0.2", "--median-tokens=40", "--max-model-len=4096"]


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_probes_answer_for_the_loop_from_their_own_thread() -> None:
    health = WorkerHealth(stall_s=1.0)
    server = start_health_server(0, "127.0.0.1", health)
    port = server.server_address[1]
    try:
        health.beat()
        assert get(port, "/healthz").status_code == 200
        ready = get(port, "/readyz")
        assert (ready.status_code, ready.text.strip()) == (503, "starting")
        health.state = "ready"
        assert get(port, "/readyz").status_code == 200
        health.state = "draining"
        assert get(port, "/readyz").status_code == 503
        time.sleep(1.2)  # nobody beats: the loop is "stuck"
        stalled = get(port, "/healthz")
        assert stalled.status_code == 503 and "stalled" in stalled.text
        health.beat()
        assert get(port, "/healthz").status_code == 200
        metrics = get(port, "/metrics")
        assert metrics.status_code == 200
        assert "mrsa_worker_tasks_in_flight" in metrics.text
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_worker_is_alive_while_it_waits_and_ready_once_connected(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A real worker whose backend is not up yet (as a vLLM still loading its model): alive (a
    liveness probe must not restart it) but not ready; ready once the backend answers; exits 0 on
    SIGTERM."""
    sim = SimulatorProcess(SIM_FLAGS, log=tmp_path / "sim.log")
    port = free_port()
    flags = ["--redis", redis_server.url, "--backend", sim.url, "--backend-kind", "vllm"]
    try:
        with child_processes(tmp_path, env=clean_env()) as start:
            worker = start(
                "worker", ["-m", "mrsa", "worker", *flags, "--metrics-port", str(port), "--consumer", "probe"]
            )
            worker.wait_until("health endpoint up", lambda: _status(port, "/healthz") == 200, 60)
            worker.wait_for_log("waiting for the backend", 30)
            assert _status(port, "/readyz") == 503
            assert _status(port, "/healthz") == 200
            sim.start()
            worker.wait_until("ready", lambda: _status(port, "/readyz") == 200, 60)
            assert "mrsa_worker_tasks_in_flight" in get(port, "/metrics").text
            worker.stop()
            assert worker.proc.returncode == 0, worker.log_tail()
    finally:
        sim.stop()


def _status(port: int, path: str) -> int | None:
    try:
        return get(port, path).status_code
    except httpx.HTTPError:
        return None
