"""``mrsa backend``: run a bundled inference server standalone, for workers to share."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Annotated, Literal, Protocol

import typer

from mrsa.backends.bundled_vllm import MAX_MODEL_LEN, MAX_NUM_SEQS, VllmServer, VllmUnavailable
from mrsa.backends.embedded import CONTEXT_LENGTH, EmbeddedServer, EmbeddedUnavailable
from mrsa.cli.common import err_console, fail

BundledKind = Literal["local", "vllm"]


class _Bundled(Protocol):
    """What this command needs of a bundled server (EmbeddedServer, VllmServer)."""

    log_path: Path
    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str: ...

    async def start(self) -> str: ...

    def stop(self) -> None: ...


def backend(
    kind: Annotated[
        BundledKind,
        typer.Option(
            help="local: llama-cpp-python (extra 'local'); vllm: upstream vLLM's CPU build in its own "
            "venv under the cache folder, built on first use (minutes, ~3.5 GB)."
        ),
    ] = "local",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    n_ctx: Annotated[
        int | None,
        typer.Option(
            help=f"Context window in tokens (default: local {CONTEXT_LENGTH}, vllm {MAX_MODEL_LEN})."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: local up to 4, vllm all).")
    ] = None,
    max_num_seqs: Annotated[int, typer.Option(help="vllm: sequences in one batch.", min=1)] = MAX_NUM_SEQS,
) -> None:
    """Serve the embedded SmolLM2-135M model until Ctrl-C (OpenAI-compatible; mrsa detects the kind)."""
    server: _Bundled
    if kind == "vllm":
        server = VllmServer(
            port=port or None,
            host=host,
            max_model_len=n_ctx or MAX_MODEL_LEN,
            max_num_seqs=max_num_seqs,
            threads=threads,
            progress=lambda message: err_console.print(message, soft_wrap=True),
        )
    else:
        server = EmbeddedServer(port=port or None, host=host, n_ctx=n_ctx or CONTEXT_LENGTH, threads=threads)

    async def run() -> None:
        await server.start()
        err_console.print(
            f"{kind} model ready at {server.url} (OpenAI-compatible; log: {server.log_path}); Ctrl-C stops it"
        )
        # Poll rather than wait in a thread: asyncio.run must be able to cancel this on SIGINT
        # (a thread blocked in wait() would keep the loop's executor, and the process, alive).
        while server.process is not None and server.process.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        raise EmbeddedUnavailable(f"the {kind} server exited; log: {server.log_path}")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        err_console.print("stopped")
    except (EmbeddedUnavailable, VllmUnavailable) as exc:  # the message ends with the server's log
        fail(str(exc))
    finally:
        server.stop()
