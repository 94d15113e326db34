"""The worker's HTTP endpoint on ``MRSA_WORKER_METRICS_PORT``: Prometheus metrics, plus the two
answers an orchestrator's probes need.

* ``/healthz`` (liveness): the worker's event loop is turning. A coroutine stamps the time every
  few seconds; when the stamp is older than ``stall_s`` (the reclaim timeout: by then other
  workers have taken this one's tasks anyway), the loop is stuck and the process should be
  restarted. The server runs in a thread of its own, so it can say so while the loop cannot.
* ``/readyz`` (readiness): connected to Redis and the backend and taking tasks; not while it
  waits for them at start-up, nor once it drains on SIGTERM.
* anything else: the metrics of the default registry (what ``/metrics`` always served).
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

BEAT_S = 2.0


class WorkerHealth:
    """What the probes see: the last time the event loop ran, and whether the worker is serving.
    Written by the loop, read by the server's thread (single attribute reads and writes)."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._last_beat = time.monotonic()
        self.state = "starting"  # starting → ready → draining

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds since the loop last ran, when that is longer than ``stall_s``; else 0."""
        silent = time.monotonic() - self._last_beat
        return silent if silent > self.stall_s else 0.0

    async def keep_beating(self, period_s: float = BEAT_S) -> None:
        """Stamp the time every ``period_s`` until cancelled."""
        while True:
            self.beat()
            await asyncio.sleep(period_s)


def _handler(health: WorkerHealth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                stalled = health.stalled_for()
                if stalled:
                    self._reply(503, f"event loop stalled for {stalled:.0f}s\n")
                else:
                    self._reply(200, "ok\n")
            elif path == "/readyz":
                self._reply(200 if health.state == "ready" else 503, f"{health.state}\n")
            else:
                self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)

        def _reply(
            self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the worker's log: say nothing."""

    return Handler


def start_health_server(port: int, host: str, health: WorkerHealth) -> ThreadingHTTPServer:
    """Serve metrics, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread (it ends
    with the process). Raises OSError when the port is taken."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    return server
