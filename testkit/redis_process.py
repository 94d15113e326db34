"""A real ``redis-server`` child process on a free loopback port, for benchmarks and tests.

One definition: the test fixture (``tests/plugins/redis_server.py``), the dispatch and
orchestration benchmarks and the soak benchmark all start Redis through :class:`RedisProcess`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mrsa.servers.server_process import free_port


def answers_ping(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether a Redis-protocol server (redis-server, redis-sentinel) at ``host:port`` answers
    PING within ``timeout_s``; False at once when ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


class RedisUnavailable(RuntimeError):
    """redis-server is not installed or did not start."""


@dataclass
class RedisProcess:
    """A redis-server child; ``restart()`` stops and starts it on the same port and data folder.

    ``appendonly`` keeps an AOF in ``directory`` (``fsync`` ``always`` or ``everysec``), so a
    restart brings the data back as a production Redis with AOF would. ``host`` is the address it
    binds (loopback unless a test gives it a network namespace's), ``launcher`` a command prefix
    (``ip netns exec NAME``), ``extra_args`` more ``redis-server`` options (``--replicaof``)."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    fsync: str = "always"
    host: str = "127.0.0.1"
    launcher: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server is not installed (the test command installs it: make test)")
        persistence = ["--appendonly", "yes", "--appendfsync", self.fsync] if self.appendonly else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.launcher,
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    self.host,
                    "--dir",
                    str(self.directory),
                    *(persistence or ["--appendonly", "no"]),
                    "--save",
                    "",
                    "--protected-mode",
                    "no",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if answers_ping(self.host, self.port, self.process, timeout_s):
            return
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        raise RedisUnavailable(f"redis-server did not start on port {self.port}; last log lines:\n{tail}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a demoted master can hang in its shutdown: end it
                proc.kill()
                proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()
