"""A bundled inference server as a child process: the embedded llama-cpp-python server, the
bundled Triton and the bundled CPU vLLM share this lifecycle.

Its output goes to a log file; it dies with its parent, even when the parent is SIGKILLed
(Linux ``PR_SET_PDEATHSIG``); readiness is polled until a deadline, and a server that exits or
never gets ready raises the server's own "unavailable" error with the log's last lines; stopping
is SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import httpx

from mrsa.servers.bundled_envs import tail_of

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL, so a
    bundled server never outlives the process that started it. The signal follows the *thread*
    that forked the child: start servers from a thread that outlives them (the event loop's)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerProcess(abc.ABC):
    """Start, health-check and stop one server process. Subclasses say how it is ready."""

    label: ClassVar[str] = "the server"  # in messages: "<label> exited with code 1; …"
    unavailable: ClassVar[type[RuntimeError]] = RuntimeError  # raised when it cannot start
    stop_grace_s: ClassVar[float] = 10.0  # SIGTERM → SIGKILL
    poll_s: ClassVar[float] = 0.25

    def __init__(self, name: str, port: int | None, host: str, log_path: Path | None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"mrsa-{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @abc.abstractmethod
    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        """One readiness probe (transport errors count as not ready)."""

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Popen ``argv`` with its output in the log file; stopped at interpreter exit too."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                preexec_fn=die_with_parent,
            )
        atexit.register(self.stop)

    def failure(self, what: str) -> RuntimeError:
        return self.unavailable(
            f"{self.label} {what}; last lines of {self.log_path}:\n{tail_of(self.log_path)}"
        )

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise self.failure(f"exited with code {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if await self.is_ready(client):
                        return
                await asyncio.sleep(self.poll_s)
        self.stop()
        raise self.failure(f"did not become ready in {timeout_s:.0f}s")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def default_threads() -> int:
    """CPU threads for a bundled CPU server: up to 4."""
    return max(1, min(4, os.cpu_count() or 1))
