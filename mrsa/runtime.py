"""The composition root: settings in, a running runtime out.

:func:`open_runtime` is the one place that turns an entry point's settings into what the engine
runs on — the store (memory without a Redis URL, Redis otherwise), the backend (the embedded model,
started from :mod:`mrsa.servers`, when no URL is given, else a client built with every backend
setting, traced when asked), its :class:`~mrsa.backends.base.BackendInfo`, the context check, and
the capacity (``backend_concurrency`` or the server's). ``mrsa solve``, ``mrsa bench``,
``mrsa worker`` / ``python -m workers`` and ``mrsa serve`` all open theirs here, so a backend
setting given to any of them reaches its requests.

The settings it reads are :class:`RuntimeSettings`: the backend's group
(:class:`~mrsa.backends.settings.BackendSettings`) and the store's
(:class:`~mrsa.store.settings.StoreSettings`); each entry point's settings subclass it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from mrsa.backends.base import Backend, BackendError, BackendInfo
from mrsa.backends.factory import make_backend
from mrsa.backends.http import backend_base_url
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.backends.settings import BackendSettings
from mrsa.backends.tracing import TracingBackend
from mrsa.backoff import Backoff, pause
from mrsa.env import ENV_PREFIX
from mrsa.servers.bundled_triton import bundled_tokenizer
from mrsa.servers.embedded import CONTEXT_LENGTH, MODEL_ALIAS, EmbeddedServer
from mrsa.store.base import Store, StoreUnavailable
from mrsa.store.opening import open_store
from mrsa.store.settings import StoreSettings

log = logging.getLogger("mrsa.runtime")

# How long to wait between attempts at a backend that is not up yet (a vLLM server takes minutes).
BACKEND_FIRST_RETRY_S = 1.0
BACKEND_LONGEST_RETRY_S = 15.0

ContextCheck = Callable[[Backend], Awaitable[object]]


class RuntimeSettings(BackendSettings, StoreSettings):
    """What opening a runtime reads: the backend's settings and the store's."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")


class Stopped(Exception):
    """``stop`` was set while the runtime was still waiting for its store or backend."""


@dataclass(frozen=True)
class StoreOptions:
    """How an entry point opens its store (see :func:`mrsa.store.opening.open_store`)."""

    max_connections: int | None = None
    events_connections: int | None = None
    wait_s: float = 0.0


@dataclass(frozen=True)
class BackendOptions:
    """How an entry point opens its backend.

    ``wait``: retry a backend that is not up yet until ``stop`` (the worker); ``defer``: build the
    client on first use and never start the embedded model (the API, which may start before its
    inference server and never generates); ``trace_dir``: record every request and response."""

    wait: bool = False
    defer: bool = False
    trace_dir: Path | None = None


async def backend_client(settings: BackendSettings) -> Backend:
    """A client for ``settings.backend_url`` built with every backend setting: kind, model,
    connection options (timeouts, retries, routing header…), context length, tokenizer (the
    bundled Triton model's found through :mod:`mrsa.servers`) and priority."""
    if settings.backend_url is None:
        raise ValueError("backend_client needs a backend_url")
    return await make_backend(
        settings.backend_url,
        settings.backend_kind,
        model=settings.model,
        options=settings.http_options(),
        context_length=settings.backend_context_length,
        tokenizer=settings.tokenizer,
        priority=settings.backend_priority,
        find_tokenizer=bundled_tokenizer,
    )


@contextlib.asynccontextmanager
async def open_backend(settings: BackendSettings, *, trace_dir: Path | None = None) -> AsyncIterator[Backend]:
    """A ready backend for the block: ``settings.backend_url``'s, or the embedded model's (started
    here, stopped on exit — also on errors and Ctrl-C)."""
    server: EmbeddedServer | None = None
    try:
        if settings.backend_url is None:
            server = EmbeddedServer()
            await server.start()
            options = settings.http_options().model_copy(update={"concurrency": 1})
            backend: Backend = OpenAICompatibleBackend(
                server.url,
                dialect="llama-cpp-python",
                model=settings.model or MODEL_ALIAS,
                options=options,
                context_length=CONTEXT_LENGTH,
            )
        else:
            backend = await backend_client(settings)
        if trace_dir is not None:
            backend = TracingBackend(backend, trace_dir)
        try:
            yield backend
        finally:
            await backend.aclose()
    finally:
        if server is not None:
            server.stop()


class DeferredBackend:
    """A backend client built on first use from the settings (the server may start after the
    process that needs it), then reused; ``None`` when no URL is configured."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.url = backend_base_url(settings.backend_url) if settings.backend_url is not None else None
        self._backend: Backend | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Backend | None:
        """The client, or ``None`` when no backend is configured. Raises BackendError when the
        server cannot be reached to detect its kind (the next call tries again)."""
        if self._backend is not None or self.url is None:
            return self._backend
        async with self._lock:
            if self._backend is None:
                self._backend = await backend_client(self.settings)
        return self._backend

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None


@dataclass
class Runtime:
    """What an entry point runs on. ``backend``/``info`` are ``None`` only for a deferred backend
    (then ``deferred`` builds it); ``capacity`` is the requests in flight it is sized for."""

    settings: RuntimeSettings
    store: Store
    backend: Backend | None
    info: BackendInfo | None
    capacity: int
    deferred: DeferredBackend | None = None

    def ready(self) -> tuple[Backend, BackendInfo]:
        """The open backend and its info (a runtime opened without ``defer``)."""
        if self.backend is None or self.info is None:
            raise RuntimeError("this runtime's backend is deferred")
        return self.backend, self.info


@contextlib.asynccontextmanager
async def open_runtime(
    settings: RuntimeSettings,
    *,
    store: StoreOptions | None = None,
    backend: BackendOptions | None = None,
    check: ContextCheck | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Runtime]:
    """The runtime of ``settings`` for the block, closed on exit (the embedded model stopped).

    The store opens first: a wrong Redis URL fails before a model starts. ``check(backend)`` runs
    once the backend answers (the context check: it raises ``ContextBudgetError``). Raises
    :class:`Stopped` when ``stop`` is set while waiting, else the store's and backend's errors."""
    store_options = store or StoreOptions()
    backend_options = backend or BackendOptions()
    async with contextlib.AsyncExitStack() as stack:
        try:
            opened = await stack.enter_async_context(
                open_store(
                    settings,
                    max_connections=store_options.max_connections,
                    events_connections=store_options.events_connections,
                    wait_s=store_options.wait_s,
                    stop=stop,
                )
            )
        except StoreUnavailable:
            if stop is not None and stop.is_set():
                raise Stopped("stopped while waiting for the store") from None
            raise
        if backend_options.defer:
            deferred = DeferredBackend(settings)
            stack.push_async_callback(deferred.aclose)
            capacity = settings.backend_concurrency or 1
            yield Runtime(settings, opened, None, None, capacity, deferred)
            return
        client, info = await _connect_backend(stack, settings, backend_options, stop)
        if check is not None:
            await check(client)
        capacity = settings.backend_concurrency or info.capacity
        yield Runtime(settings, opened, client, info, capacity)


async def _connect_backend(
    stack: contextlib.AsyncExitStack,
    settings: RuntimeSettings,
    options: BackendOptions,
    stop: asyncio.Event | None,
) -> tuple[Backend, BackendInfo]:
    """The backend and its info; with ``options.wait``, retried with back-off while the server is
    not up yet (a retryable error), until ``stop`` is set."""
    backoff = Backoff(BACKEND_FIRST_RETRY_S, BACKEND_LONGEST_RETRY_S)
    while True:
        attempt = contextlib.AsyncExitStack()
        try:
            backend = await attempt.enter_async_context(open_backend(settings, trace_dir=options.trace_dir))
            info = await backend.info()
        except BackendError as exc:
            await attempt.aclose()
            if not (options.wait and exc.retryable):
                raise
            if backoff.attempts == 0:
                log.warning("waiting for the backend: %s", exc)
        except BaseException:
            await attempt.aclose()
            raise
        else:
            stack.push_async_exit(attempt)
            return backend, info
        if stop is not None and stop.is_set():
            raise Stopped("stopped while waiting for the backend")
        if await pause(backoff.next(), stop):
            raise Stopped("stopped while waiting for the backend")


__all__ = [
    "BackendOptions",
    "DeferredBackend",
    "Runtime",
    "RuntimeSettings",
    "Stopped",
    "StoreOptions",
    "backend_client",
    "open_backend",
    "open_runtime",
]
