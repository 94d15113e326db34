"""Run the simulator as a child process on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from mrsa.backends.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def running_simulator(flags: Sequence[str] = (), start_timeout_s: float = 30.0) -> Iterator[str]:
    """``python -m benchmarks.simulator`` with ``flags``; yields its URL once ``/health`` answers,
    and stops it on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.simulator", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulator did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
