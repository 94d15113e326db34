"""``mrsa backend``: run the embedded model standalone, for workers to share."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from mrsa.backends.embedded import CONTEXT_LENGTH, EmbeddedServer, EmbeddedUnavailable
from mrsa.cli.common import err_console, fail


def backend(
    port: Annotated[int, typer.Option(help="Port to listen on (0 = a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    n_ctx: Annotated[int, typer.Option(help="Context window in tokens.")] = CONTEXT_LENGTH,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: up to 4).")] = None,
) -> None:
    """Serve the embedded SmolLM2-135M model (llama-cpp-python) until Ctrl-C. Its /v1/models
    reports the context as max_model_len, as vLLM does, so the API's budget check needs no
    --context-length."""
    server = EmbeddedServer(port=port or None, host=host, n_ctx=n_ctx, threads=threads)

    async def run() -> None:
        await server.start()
        err_console.print(
            f"embedded model ready at {server.url} (OpenAI-compatible, context {server.n_ctx} tokens "
            f"reported in /v1/models; log: {server.log_path}); Ctrl-C stops it"
        )
        # Poll rather than wait in a thread: asyncio.run must be able to cancel this on SIGINT
        # (a thread blocked in wait() would keep the loop's executor, and the process, alive).
        while server.process is not None and server.process.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        raise EmbeddedUnavailable(f"the embedded server exited; log: {server.log_path}")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        err_console.print("stopped")
    except EmbeddedUnavailable as exc:
        fail(str(exc))
    finally:
        server.stop()
