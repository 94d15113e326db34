"""The whole service behind the console's browser tests: a real ``redis-server``, ``mrsa serve``
with auth on, and one ``mrsa worker`` on a real inference server (the embedded model or the
simulator), each a separate process. Its ``logs()`` are the processes' last lines, for failures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mrsa.servers.server_process import free_port
from testkit.processes import Child, child_processes, http_ok
from tests.plugins.redis_server import RedisServer

API_KEY = "console-key-7d21"
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class ConsoleStack:
    url: str
    children: list[Child]

    @property
    def console_url(self) -> str:
        return f"{self.url}/ui/"

    def logs(self, lines: int = 25) -> str:
        """The last ``lines`` of every process's log, each under its name."""
        return "\n".join(f"--- {c.name} (last {lines} lines)\n{c.log_tail(lines)}" for c in self.children)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A REST call with the key; the JSON reply (asserting success, with the logs otherwise)."""
        r = httpx.request(
            method, f"{self.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30, **kwargs
        )
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}\n{self.logs()}"
        return r.json()

    def submit(self, problem: str, preset: str, **params: Any) -> str:
        return str(
            self.api("POST", "/v1/jobs", json={"problem": problem, "preset": preset, "params": params})["id"]
        )

    def wait_status(self, job_id: str, wanted: tuple[str, ...], within_s: float) -> dict[str, Any]:
        """Poll the job until its status is one of ``wanted``; fail with the logs otherwise."""
        deadline = time.monotonic() + within_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.api("GET", f"/v1/jobs/{job_id}")
            if job["status"] in wanted:
                return job
            if job["status"] in TERMINAL:
                break
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: wanted {wanted}, got {job}\n{self.logs()}")


@contextlib.contextmanager
def console_stack(
    folder: Path, worker_args: list[str], serve_args: Sequence[str] = ()
) -> Iterator[ConsoleStack]:
    """Redis, ``mrsa serve --api-keys KEY SERVE_ARGS`` and ``mrsa worker WORKER_ARGS`` (``--redis``
    added), their logs in ``folder``; all stopped on exit."""
    redis = RedisServer(folder / "redis")
    (folder / "redis").mkdir(parents=True, exist_ok=True)
    redis.start()
    try:
        with child_processes(folder) as start:
            port = free_port()
            api = start(
                "api",
                [
                    "-m",
                    "mrsa",
                    "serve",
                    "--port",
                    str(port),
                    "--redis",
                    redis.url,
                    "--api-keys",
                    API_KEY,
                    *serve_args,
                ],
            )
            url = f"http://127.0.0.1:{port}"
            api.wait_until("mrsa serve ready", lambda: http_ok(f"{url}/readyz"), 120)
            worker = start("worker", ["-m", "mrsa", "worker", "--redis", redis.url, *worker_args])
            worker.wait_for_log(" ready: ", 120)
            yield ConsoleStack(url, [api, worker])
    finally:
        redis.stop()
