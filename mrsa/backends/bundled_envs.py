"""Private virtual environments for the bundled inference servers (Triton, vLLM's CPU build).

Their pins clash with mrsa's own (PyTriton's Python backend needs ``numpy<2``; vLLM pins an exact
torch), so each lives in a venv of its own under the cache folder, keyed by what it installs: a
change of pins makes a new folder and never reuses a half-built one. Creation holds a file lock,
so two processes (two pytest sessions, a test and ``mrsa backend``) never build the same env at
once; a finished env is marked by a ``.ready`` file written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class BundledEnvError(RuntimeError):
    """An environment could not be built; the message ends with the installer's last lines."""


def cache_root() -> Path:
    """``$MRSA_CACHE_DIR``, else ``$XDG_CACHE_HOME/mrsa``, else ``~/.cache/mrsa``."""
    explicit = os.environ.get("MRSA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mrsa"


@dataclass(frozen=True)
class EnvSpec:
    """What one environment holds: pip install steps, run in order (each a list of pip arguments).

    Several steps exist because some installs must come after others (a torch build chosen first,
    so a later requirement does not pull another one) or need removals (``uninstall`` steps:
    arguments starting with ``uninstall``).
    """

    name: str
    steps: tuple[tuple[str, ...], ...]
    python: str = field(default_factory=lambda: sys.executable)
    # Extra environment of the pip steps (e.g. ``CMAKE_ARGS`` for a package built from source);
    # part of the key, since it changes what gets built.
    environment: tuple[tuple[str, str], ...] = ()

    def key(self) -> str:
        """A short digest of the steps, their environment and the interpreter's version: the
        folder's name suffix."""
        content: dict[str, object] = {"steps": self.steps, "python": sys.version_info[:2]}
        if self.environment:
            content["environment"] = self.environment
        payload = json.dumps(content, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def path(self) -> Path:
        return cache_root() / "envs" / f"{self.name}-{self.key()}"


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def tail_of(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' when it does not exist), for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created with its folder): one builder at a time."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_env(spec: EnvSpec, progress: Callable[[str], None] | None = None) -> Path:
    """The environment's folder, built first if it is not ready (may take minutes; ``progress``
    hears each step). Raises :class:`BundledEnvError` with the installer's last log lines."""
    env = spec.path()
    ready = env / ".ready"
    if ready.exists():
        return env
    say = progress or (lambda _message: None)
    with file_lock(env.with_name(env.name + ".lock")):
        if ready.exists():  # built by another process while this one waited for the lock
            return env
        if env.exists():
            shutil.rmtree(env)  # a half-built env from an interrupted run
        log = env.with_name(env.name + ".log")
        say(f"building the {spec.name} environment in {env} (log: {log}); this runs once")
        environ = {**os.environ, **dict(spec.environment)}
        with log.open("w") as out:
            _run([spec.python, "-m", "venv", str(env)], out, log)
            _run([str(env_python(env)), "-m", "pip", "install", "-q", "--upgrade", "pip"], out, log)
            for step in spec.steps:
                say(f"pip {' '.join(step)}")
                args = ["uninstall", "-y", *step[1:]] if step[:1] == ("uninstall",) else ["install", *step]
                _run([str(env_python(env)), "-m", "pip", *args], out, log, environ)
        ready.write_text(json.dumps({"steps": spec.steps}))
        say(f"{spec.name} environment ready")
    return env


def _run(argv: Sequence[str], out: IO[str], log: Path, environ: dict[str, str] | None = None) -> None:
    result = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, check=False, env=environ)
    if result.returncode != 0:
        raise BundledEnvError(
            f"{' '.join(argv)} exited {result.returncode}; last lines of {log}:\n{tail_of(log)}"
        )
