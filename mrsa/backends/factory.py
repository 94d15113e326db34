"""Build a backend client from a URL and a kind, detecting the server's dialect when asked to.

What to build it from (the settings, the embedded model when there is no URL, tracing) is the
composition root's (:mod:`mrsa.runtime`); this module knows only the clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from mrsa.backends.base import Backend, BackendError, BackendUnavailable
from mrsa.backends.http import HttpClient, HttpOptions, backend_base_url
from mrsa.backends.openai import DIALECTS, Dialect, OpenAICompatibleBackend
from mrsa.backends.wire import Wire

if TYPE_CHECKING:  # the Triton client is imported where it is built
    from mrsa.backends.triton import TokenizerFinder

BACKEND_KINDS: tuple[str, ...] = ("auto", *DIALECTS, "triton")


async def detect_kind(url: str, options: HttpOptions | None = None, *, wire: Wire | None = None) -> str:
    """Probe ``url`` for its server type. Raises :class:`BackendUnavailable` naming the URL."""
    opts = (options or HttpOptions()).model_copy(update={"max_retries": 0})
    client = HttpClient(backend_base_url(url), opts, backend_kind="probe", wire=wire)
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
    find_tokenizer: TokenizerFinder | None = None,
) -> Backend:
    """A backend client for ``url`` (its root, with or without ``/v1``: the client normalises it);
    ``kind='auto'`` probes the server first. ``priority``: send each request's priority (vLLM,
    started with ``--scheduling-policy priority``; other servers are sent none).
    ``find_tokenizer``: Triton without ``tokenizer``, where to look for the served model's."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"backend kind: unknown {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
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
            find_tokenizer=find_tokenizer,
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
