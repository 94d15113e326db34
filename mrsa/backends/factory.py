"""Build a backend from a URL and a kind, detecting the server's dialect when asked to."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from mrsa.backends.base import Backend, BackendError, BackendUnavailable
from mrsa.backends.http import HttpClient, HttpOptions, backend_base_url
from mrsa.backends.openai import DIALECTS, Dialect, OpenAICompatibleBackend
from mrsa.backends.tracing import TracingBackend
from mrsa.backends.wire import Wire
from mrsa.servers.embedded import CONTEXT_LENGTH, MODEL_ALIAS, EmbeddedServer

BACKEND_KINDS: tuple[str, ...] = ("auto", *DIALECTS, "triton")


async def detect_kind(url: str, options: HttpOptions | None = None, *, wire: Wire | None = None) -> str:
    """Probe ``url`` for its server type. Raises :class:`BackendUnavailable` naming the URL."""
    opts = (options or HttpOptions()).model_copy(update={"max_retries": 0})
    client = HttpClient(url, opts, backend_kind="probe", wire=wire)
    try:
        probes: list[tuple[str, str, dict[str, str] | None, str]] = [
            ("GET", "/v2/health/ready", None, "triton"),
            ("GET", "/props", None, "llamacpp"),
            ("POST", "/extras/tokenize", {"input": ""}, "llama-cpp-python"),
            ("GET", "/get_server_info", None, "sglang"),
            ("GET", "/version", None, "vllm"),
        ]
        for method, path, body, kind in probes:
            try:
                data = await client.request_json(method, path, body, retries=0, timeout_s=10.0)
            except BackendUnavailable:
                raise
            except BackendError:
                continue
            if kind == "llamacpp" and not (isinstance(data, dict) and "default_generation_settings" in data):
                continue
            return kind
        return "vllm"  # any other OpenAI-compatible server: the vLLM dialect is the common subset
    finally:
        await client.aclose()


async def make_backend(
    url: str,
    kind: str = "auto",
    *,
    model: str | None = None,
    options: HttpOptions | None = None,
    context_length: int | None = None,
    tokenizer: Path | None = None,
    wire: Wire | None = None,
    priority: bool = False,
) -> Backend:
    """A backend client for ``url`` (its root, with or without ``/v1``); ``kind='auto'`` probes
    the server first. ``priority``: send each request's priority (vLLM, started with
    ``--scheduling-policy priority``; other servers are sent none)."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"backend kind: unknown {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    url = backend_base_url(url)
    if kind == "auto":
        kind = await detect_kind(url, options, wire=wire)
    if kind == "triton":
        from mrsa.backends.triton import TritonBackend

        return TritonBackend(
            url,
            model=model,
            tokenizer=tokenizer,
            options=options,
            wire=wire,
            context_length=context_length,
        )
    return OpenAICompatibleBackend(
        url,
        dialect=cast(Dialect, kind),
        model=model,
        options=options,
        context_length=context_length,
        wire=wire,
        enable_priority=priority,
    )


@contextlib.asynccontextmanager
async def open_backend(
    url: str | None,
    kind: str = "auto",
    *,
    model: str | None = None,
    options: HttpOptions | None = None,
    trace_dir: Path | None = None,
    tokenizer: Path | None = None,
    priority: bool = False,
) -> AsyncIterator[Backend]:
    """A ready backend for the duration of the block: ``url`` if given, else the embedded model
    (started here, stopped on exit — also on errors and Ctrl-C)."""
    server: EmbeddedServer | None = None
    try:
        if url is None:
            server = EmbeddedServer()
            await server.start()
            opts = (options or HttpOptions()).model_copy(update={"concurrency": 1})
            backend: Backend = OpenAICompatibleBackend(
                server.url,
                dialect="llama-cpp-python",
                model=model or MODEL_ALIAS,
                options=opts,
                context_length=CONTEXT_LENGTH,
            )
        else:
            backend = await make_backend(
                url, kind, model=model, options=options, tokenizer=tokenizer, priority=priority
            )
        if trace_dir is not None:
            backend = TracingBackend(backend, trace_dir)
        try:
            yield backend
        finally:
            await backend.aclose()
    finally:
        if server is not None:
            server.stop()
