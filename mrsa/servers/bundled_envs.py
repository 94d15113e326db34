"""Private virtual environments for the bundled inference servers (Triton, vLLM's CPU build).

Their pins clash with mrsa's own (PyTriton's Python backend needs ``numpy<2``; vLLM pins an exact
torch), so each lives in a venv of its own under the cache folder, keyed by what it installs: a
change of pins makes a new folder and never reuses a half-built one. Creation holds a file lock,
so two processes (two pytest sessions, a test and ``mrsa backend``) never build the same env at
once; a finished env is marked by a ``.ready`` file written last.

Each env is locked like mrsa's own (``requirements/lock.txt``): a committed requirements file
pins every package the env holds, with hashes, and a locked env is installed from it alone
(``pip install --no-deps --require-hashes``), so a new machine gets what the suite passed with
whatever its caches hold. pip installs them: the vLLM env's CPU build of torch is a wheel that pip
finds on these machines' disk (its ``find-links``), and pip's wheel cache reuses the
llama-cpp-python compiled for mrsa's env. :func:`relock` writes a lock by building the env
from its unpinned steps in a scratch folder and freezing what they installed (so uninstalls and
``--no-deps`` steps are honoured); ``make lock`` runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# The committed locks of the bundled servers' environments (shipped in the wheel: `mrsa backend`
# builds them on a user's machine too).
LOCKS = Path(__file__).parent / "locks"


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
    # The committed lock: every package of the env as ``name==version``, written by :func:`relock`.
    # When given, the env is installed from it alone; the steps only say how to make a new one.
    lock: Path | None = None

    def key(self) -> str:
        """A short digest of the steps, the lock's content, their environment and the interpreter's
        version: the folder's name suffix (a new lock makes a new env)."""
        content: dict[str, object] = {"steps": self.steps, "python": sys.version_info[:2]}
        if self.environment:
            content["environment"] = self.environment
        if self.lock is not None:
            content["lock"] = self.lock.read_text() if self.lock.is_file() else None
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
        with log.open("w") as out:
            if spec.lock is None:
                _build(spec, spec.steps, env, out, log, say)
            else:
                _install_lock(spec, env, out, log, say)
        ready.write_text(json.dumps({"lock": str(spec.lock)} if spec.lock else {"steps": spec.steps}))
        say(f"{spec.name} environment ready")
    return env


def _build(
    spec: EnvSpec,
    steps: Sequence[Sequence[str]],
    env: Path,
    out: IO[str],
    log: Path,
    say: Callable[[str], None],
) -> None:
    """The unlocked build: the steps in order, pip resolving each."""
    environ = {**os.environ, **dict(spec.environment)}
    _run([spec.python, "-m", "venv", str(env)], out, log)
    for step in steps:
        say(f"pip {' '.join(step)}")
        args = ["uninstall", "-y", *step[1:]] if step[:1] == ("uninstall",) else ["install", *step]
        _run([str(env_python(env)), "-m", "pip", *args], out, log, environ)


def _install_lock(spec: EnvSpec, env: Path, out: IO[str], log: Path, say: Callable[[str], None]) -> None:
    """Install exactly the lock's pins, hash-checked, nothing resolved. pip's wheel cache is keyed by
    the sdist's hash, so the llama-cpp-python that ``make setup`` compiled for mrsa's own env (the
    same pin and hash) is reused, not compiled again. Pins with a local version
    (``torch==2.13.0+cpu``) are not on the index and carry no hash: they are installed first, from
    where pip's configuration finds them (``--require-hashes`` refuses a bare pin)."""
    assert spec.lock is not None
    if not spec.lock.is_file():
        raise BundledEnvError(f"the {spec.name} environment's lock {spec.lock} is missing (make lock)")
    entries = lock_entries(spec.lock)
    local = [entry.pin for entry in entries.values() if "+" in entry.version]
    hashed = [entry.text for entry in entries.values() if "+" not in entry.version]
    environ = {**os.environ, **dict(spec.environment)}
    _run([spec.python, "-m", "venv", str(env)], out, log)
    pip = [str(env_python(env)), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]
    if local:
        say(f"pip install {' '.join(local)}")
        _run([*pip, *local], out, log, environ)
    requirements = env / "mrsa-lock.txt"
    requirements.write_text("\n".join(hashed) + "\n")
    say(f"pip install --no-deps --require-hashes -r {spec.lock.name} ({len(hashed)} packages)")
    _run([*pip, "--require-hashes", "-r", str(requirements)], out, log, environ)


def _uv() -> str | None:
    """uv beside this interpreter (mrsa's own venv, dev extra), else on PATH, else None."""
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def relock(spec: EnvSpec, progress: Callable[[str], None] | None = None) -> Path:
    """Write ``spec.lock`` anew: build the env from its unpinned steps in a scratch folder (the
    newest releases they admit), then freeze every package it ended up with. Minutes, like a build."""
    if spec.lock is None:
        raise BundledEnvError(f"the {spec.name} environment has no lock file to write")
    say = progress or (lambda _message: None)
    scratch = cache_root() / "relock" / spec.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    log = scratch.with_name(spec.name + ".log")
    try:
        with log.open("w") as out:
            _build(spec, spec.steps, scratch, out, log, say)
        frozen = subprocess.run(
            [str(env_python(scratch)), "-m", "pip", "freeze", "--exclude-editable"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pins = sorted((line for line in frozen.splitlines() if "==" in line), key=str.lower)
    header = (
        f"# The {spec.name} environment, every package pinned: written by `make lock` "
        "(mrsa.servers.bundled_envs.relock)\n# from the steps in the code; installed as it "
        "stands, hash-checked, nothing resolved (bundled_envs._install_lock).\n"
    )
    spec.lock.parent.mkdir(parents=True, exist_ok=True)
    spec.lock.write_text(header + with_hashes(pins))
    say(f"{spec.lock}: {len(pins)} packages")
    return spec.lock


def with_hashes(pins: Sequence[str]) -> str:
    """The pins as a hash-checked requirements text: uv looks up each release's hashes on the
    index (``--no-deps``: the pins are the whole set already). Local versions (a CPU torch build
    from pip's find-links) are not on the index and stay as bare pins."""
    uv = _uv()
    if uv is None:
        raise BundledEnvError("relocking needs uv (it is in mrsa's dev extra)")
    public = [pin for pin in pins if "+" not in pin]
    argv = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--no-deps", "--generate-hashes"]
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "pins.in"
        source.write_text("\n".join(public) + "\n")
        compiled = subprocess.run(
            [*argv, "--python-version", platform.python_version(), str(source)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    local = [pin for pin in pins if "+" in pin]
    return compiled + "".join(f"{pin}\n" for pin in local)


@dataclass(frozen=True)
class LockEntry:
    """One package of a lock: its pin line and the whole text of its entry (hashes included)."""

    name: str
    version: str
    text: str

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def lock_entries(lock: Path) -> dict[str, LockEntry]:
    """``{normalised name: entry}`` of a requirements lock, with or without ``--hash`` lines."""
    entries: dict[str, LockEntry] = {}
    current: list[str] = []

    def close() -> None:
        if current:
            name, _, version = current[0].split(";", 1)[0].rstrip(" \\").partition("==")
            key = name.strip().lower().replace("_", "-").replace(".", "-")
            entries[key] = LockEntry(name.strip(), version.strip(), "\n".join(current))
            current.clear()

    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line[0].isspace():
            current.append(line)
        else:
            close()
            current.append(line)
    close()
    return entries


def _run(argv: Sequence[str], out: IO[str], log: Path, environ: dict[str, str] | None = None) -> None:
    result = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, check=False, env=environ)
    if result.returncode != 0:
        raise BundledEnvError(
            f"{' '.join(argv)} exited {result.returncode}; last lines of {log}:\n{tail_of(log)}"
        )
