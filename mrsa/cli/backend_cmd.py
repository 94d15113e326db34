"""``mrsa backend``: run a bundled inference server standalone, for workers to share."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from mrsa.cli.common import EXIT_USAGE, err_console, fail
from mrsa.servers.bundled_triton import BUNDLED_MODEL, TritonServer, TritonUnavailable
from mrsa.servers.bundled_vllm import MAX_MODEL_LEN, MAX_NUM_SEQS, VllmServer, VllmUnavailable
from mrsa.servers.embedded import CONTEXT_LENGTH, EmbeddedServer, EmbeddedUnavailable

KINDS = ("local", "triton", "vllm")


def backend(
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="local: the embedded model on llama-cpp-python's OpenAI server; triton: the bundled "
            "Triton Inference Server (PyTriton's tritonserver, the vLLM backend's generate wire) serving "
            "the same model — its environment is built on first use (about a minute); vllm: upstream "
            "vLLM's own OpenAI server (its CPU build) serving the same model, dequantised — its "
            "environment (~3.4 GB) is built on first use (about 3 minutes).",
        ),
    ] = "local",
    port: Annotated[int, typer.Option(help="Port to listen on (0 = a free one).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    n_ctx: Annotated[
        int | None,
        typer.Option(help=f"Context window in tokens (default {CONTEXT_LENGTH}; vllm {MAX_MODEL_LEN})."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: up to 4; not for vllm, which binds its own).")
    ] = None,
    max_num_seqs: Annotated[
        int, typer.Option(min=1, help="vllm: sequences batched at once (its --max-num-seqs).")
    ] = MAX_NUM_SEQS,
) -> None:
    """Serve the embedded SmolLM2-135M model until Ctrl-C. Its /v1/models (local) or model config
    (triton) reports the context, as vLLM does, so the API's budget check needs no --context-length."""
    if kind not in KINDS:
        fail(f"kind: unknown {kind!r}; choose one of {', '.join(KINDS)}", EXIT_USAGE)
    server: EmbeddedServer | TritonServer | VllmServer
    start: Callable[[], Awaitable[str]]
    errors: tuple[type[Exception], ...]
    if kind == "triton":
        triton = TritonServer(port=port or None, host=host, n_ctx=n_ctx or CONTEXT_LENGTH, threads=threads)
        server, errors = triton, (TritonUnavailable,)

        async def start_triton() -> str:
            return await triton.start(err_console.print)

        start = start_triton
        ready = (
            f"bundled Triton ready at {triton.url}: model {BUNDLED_MODEL} on POST /v2/models/{BUNDLED_MODEL}/"
            f"generate, metrics at {triton.metrics_url} (log: {triton.log_path}). Use it with "
            f"--backend {triton.url} --backend-kind triton; Ctrl-C stops it"
        )
    elif kind == "vllm":
        if threads is not None:
            fail("threads: vLLM's CPU build binds its engine to the cores itself; drop --threads", EXIT_USAGE)
        vllm = VllmServer(
            port=port or None,
            host=host,
            max_model_len=n_ctx or MAX_MODEL_LEN,
            max_num_seqs=max_num_seqs,
            progress=lambda message: err_console.print(message, soft_wrap=True),
        )
        server, errors, start = vllm, (VllmUnavailable,), vllm.start
        ready = (
            f"bundled vLLM ready at {vllm.url} (OpenAI-compatible, metrics at {vllm.url}/metrics; log: "
            f"{vllm.log_path}). Use it with --backend {vllm.url}; Ctrl-C stops it"
        )
    else:
        embedded = EmbeddedServer(
            port=port or None, host=host, n_ctx=n_ctx or CONTEXT_LENGTH, threads=threads
        )
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
