"""Child processes of a whole-service run (``mrsa serve``, workers): started with their output in
a log file, stopped together. One definition for the soak benchmark and the end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from testkit.simulator.process import ROOT


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``MRSA_*`` (children get their settings as flags), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    env.update(extra)
    return env


def http_ok(url: str) -> bool:
    """``GET url`` answered 200 (a readiness probe: any transport error is a no)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


@dataclass
class Child:
    """A started process and the file its stdout and stderr go to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def stop(self, grace_s: float = 40.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (workers finish or release their tasks first)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wait_until(self, what: str, condition: Callable[[], bool], within_s: float) -> None:
        """Poll ``condition``; raise with this process's log tail if it exits or time runs out."""
        deadline = time.monotonic() + within_s
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{what}: {self.name} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {within_s:.0f}s; {self.name}'s log:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def wait_for_log(self, text: str, within_s: float) -> None:
        """Wait until ``text`` appears in the log (e.g. a worker's " ready: " line)."""
        self.wait_until(f"{text.strip()!r} in the log", lambda: text in self.log, within_s)


Starter = Callable[..., Child]


@contextlib.contextmanager
def child_processes(folder: Path, env: Mapping[str, str] | None = None) -> Iterator[Starter]:
    """Yields ``start(name, args, env=None, launcher=()) -> Child`` (``LAUNCHER python ARGS``, log
    in ``folder/NAME.log``; a launcher such as ``ip netns exec NS`` must exec the command in its own
    process, so the PID stays the child's); on exit every child still running is stopped, the last
    started first."""
    started: list[Child] = []

    def start(
        name: str,
        args: list[str],
        env_override: Mapping[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> Child:
        log_path = folder / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*launcher, sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=dict(env_override or env or clean_env()),
            )
        child = Child(name, proc, log_path)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in reversed(started):
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in reversed(started):
            child.stop()
