"""``mrsa backend``: run a bundled inference server standalone, for workers to share."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from mrsa.backends.bundled_triton import BUNDLED_MODEL, TritonServer, TritonUnavailable
from mrsa.backends.embedded import CONTEXT_LENGTH, EmbeddedServer, EmbeddedUnavailable
from mrsa.cli.common import EXIT_USAGE, err_console, fail

KINDS = ("local", "triton")


def backend(
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="local: the embedded model on llama-cpp-python's OpenAI server; triton: the bundled "
            "Triton Inference Server (PyTriton's tritonserver, the vLLM backend's generate wire) serving "
            "the same model — its environment is built on first use (about a minute).",
        ),
    ] = "local",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    n_ctx: Annotated[int, typer.Option(help="Context window in tokens.")] = CONTEXT_LENGTH,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: up to 4).")] = None,
) -> None:
    """Serve the embedded SmolLM2-135M model until Ctrl-C. Its /v1/models (local) or model config
    (triton) reports the context, as vLLM does, so the API's budget check needs no --context-length."""
    if kind not in KINDS:
        fail(f"kind: unknown {kind!r}; choose one of {', '.join(KINDS)}", EXIT_USAGE)
    server: EmbeddedServer | TritonServer
    start: Callable[[], Awaitable[str]]
    errors: tuple[type[Exception], ...]
    if kind == "triton":
        triton = TritonServer(port=port or None, host=host, n_ctx=n_ctx, threads=threads)
        server, errors = triton, (TritonUnavailable,)

        async def start_triton() -> str:
            return await triton.start(err_console.print)

        start = start_triton
        ready = (
            f"bundled Triton ready at {triton.url}: model {BUNDLED_MODEL} on POST /v2/models/{BUNDLED_MODEL}/"
            f"generate, metrics at {triton.metrics_url} (log: {triton.log_path}). Use it with "
            f"--backend {triton.url} --backend-kind triton; Ctrl-C stops it"
        )
    else:
        embedded = EmbeddedServer(port=port or None, host=host, n_ctx=n_ctx, threads=threads)
        server, errors, start = embedded, (), embedded.start
        ready = (
            f"embedded model ready at {embedded.url} (OpenAI-compatible, context {embedded.n_ctx} tokens "
            f"reported in /v1/models; log: {embedded.log_path}); Ctrl-C stops it"
        )

    async def run() -> None:
        # SIGTERM (docker stop, a supervisor) stops the server as Ctrl-C does, cleanup included.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        await start()
        err_console.print(ready)
        # Poll rather than wait in a thread: asyncio.run must be able to cancel this on SIGINT
        # (a thread blocked in wait() would keep the loop's executor, and the process, alive).
        while server.process is not None and server.process.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        raise EmbeddedUnavailable(f"the {kind} server exited; log: {server.log_path}")

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        err_console.print("stopped")
    except (EmbeddedUnavailable, *errors) as exc:
        fail(str(exc))
    finally:
        server.stop()
