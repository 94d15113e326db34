"""Run the simulator as a child process on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from mrsa.servers.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]


class SimulatorProcess:
    """``python -m testkit.simulator`` with ``flags`` on a port fixed at construction, so it can
    be stopped and started again at the same URL (an outage). Output goes to ``log`` when given
    (its tail is in the error when the simulator does not start), else to this process's own."""

    def __init__(self, flags: Sequence[str] = (), log: Path | None = None) -> None:
        self.flags = list(flags)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start it and return once ``/health`` answers; raise (with the log's tail) otherwise."""
        cmd = [sys.executable, "-m", "testkit.simulator", "--port", str(self.port), *self.flags]
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(self.log.open("ab")) if self.log is not None else None
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:] if self.log is not None else ""
                raise RuntimeError(
                    f"the simulator did not start (exit code {code})" + (f":\n{tail}" if tail else "")
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate it (killed if it does not exit within 10 s); a no-op when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def running_simulator(flags: Sequence[str] = (), start_timeout_s: float = 30.0) -> Iterator[str]:
    """``python -m testkit.simulator`` with ``flags``; yields its URL once ``/health`` answers,
    and stops it on exit."""
    sim = SimulatorProcess(flags)
    try:
        sim.start(start_timeout_s)
        yield sim.url
    finally:
        sim.stop()
