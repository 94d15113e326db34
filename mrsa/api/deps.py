"""What the routes run on: the store (job state and task queue), the job service on that store,
an optional backend client (asked about context length and health only — the API process never
generates), and the limits.

``create_app`` builds :class:`ApiDeps` from :class:`~mrsa.api.settings.ApiSettings` at startup
(its store and backend through :func:`mrsa.runtime.open_runtime`), or takes ready ones (tests pass
a store opened on their own event loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from mrsa.api.chat.passthrough_slots import Passthroughs
from mrsa.api.chat.relay import RelayLimits
from mrsa.api.settings import default
from mrsa.api.streams import StreamSlots
from mrsa.backends.base import Backend, BackendError
from mrsa.backends.settings import BackendSettings
from mrsa.engine.job_service import JobService
from mrsa.prices import PriceTable
from mrsa.runtime import DeferredBackend
from mrsa.store.base import Store

log = logging.getLogger("mrsa.api")


JSON_ESCAPE_RATIO = 6


@dataclass
class ApiConfig:
    """Limits and timings of the API. The env-backed ones are :class:`~mrsa.api.settings.ApiSettings`'
    fields, their defaults read from there (written once); the rest are fixed here."""

    api_keys: list[str] = field(default_factory=list)
    max_problem_bytes: int = default("api_max_problem_bytes")
    max_active_jobs: int = default("api_max_active_jobs")
    retry_after_s: int = 10
    idempotency_ttl_s: int = 86_400
    # Event stream: how long one store read waits before the stream re-checks the job.
    events_block_ms: int = 5_000
    ping_s: float = 15.0
    # Chat completions: hold a non-streaming response this long before committing to 200 and
    # sending whitespace keep-alives; keep-alive interval of both modes.
    chat_hold_s: float = 20.0
    keepalive_s: float = 10.0
    context_check_timeout_s: float = 20.0
    # Event streams and waiting chat completions (each holds a connection of the store's events pool).
    max_streams_per_key: int = default("api_max_streams_per_key")
    max_streams: int = default("api_max_streams")
    # Chat requests passed through to the backend (mrsa.api.chat.relay): bytes relayed, total and idle
    # deadlines, open ones per key and in all, and the time they get on shutdown.
    passthrough_max_bytes: int = default("api_passthrough_max_bytes")
    passthrough_timeout_s: float = default("api_passthrough_timeout_s")
    passthrough_idle_s: float = default("api_passthrough_idle_s")
    max_passthroughs_per_key: int = default("api_max_passthroughs_per_key")
    max_passthroughs: int = default("api_max_passthroughs")
    passthrough_drain_s: float = default("api_passthrough_drain_s")
    metrics_cache_s: float = 5.0
    # Run folders of sweeps served under /v1/reports (MRSA_REPORTS_DIR); None = none.
    reports_dir: Path | None = None
    # Prices results are shown with (``MRSA_PRICES_FILE``); None: results carry no cost.
    prices: PriceTable | None = None

    @property
    def max_body_bytes(self) -> int:
        """The whole request body: room for any problem within ``max_problem_bytes`` (counted as
        UTF-8) however the client escapes it — a JSON ``\\u`` escape (backslash, ``u``, four hex
        digits) takes 6 bytes for one byte of UTF-8 at worst (a control character; an emoji is 12
        for 4) — plus room for the rest."""
        return JSON_ESCAPE_RATIO * self.max_problem_bytes + 65_536


class BackendHandle:
    """The API's backend: a client built on first use (the server may start after the API) from
    the backend settings by the composition root (:class:`mrsa.runtime.DeferredBackend`: every
    backend setting applies), then reused; or a ready client (tests)."""

    def __init__(
        self,
        url: str | None,
        kind: str = "auto",
        *,
        model: str | None = None,
        context_length: int | None = None,
        tokenizer: Path | None = None,
        backend: Backend | None = None,
        deferred: DeferredBackend | None = None,
    ) -> None:
        if deferred is None and backend is None:
            settings = BackendSettings(
                backend_url=url,
                backend_kind=kind,
                model=model,
                backend_context_length=context_length,
                tokenizer=tokenizer,
            )
            deferred = DeferredBackend(settings)
        self._deferred = deferred
        self._backend = backend
        self._owned = backend is None
        # The server's root (normalised once, where the client is built): passthroughs are sent here.
        self.url = backend.url if backend is not None else deferred.url if deferred is not None else None
        # The router's affinity header (MRSA_BACKEND_ROUTING_HEADER): a passthrough sends on a client's own.
        self.routing_header = deferred.settings.backend_routing_header if deferred is not None else None

    @property
    def configured(self) -> bool:
        return self.url is not None

    async def get(self) -> Backend | None:
        """The client, or ``None`` when no backend is configured. Raises BackendError when the server
        cannot be reached to detect its kind (the next call tries again)."""
        if self._backend is not None or self._deferred is None:
            return self._backend
        return await self._deferred.get()

    async def health(self) -> str:
        """'ok', 'not configured', or why the backend is not healthy."""
        if not self.configured:
            return "not configured"
        try:
            backend = await self.get()
            assert backend is not None
            return "ok" if await backend.health() else f"{backend.url} is not healthy"
        except BackendError as exc:
            return str(exc)

    async def aclose(self) -> None:
        if self._owned and self._deferred is not None:
            await self._deferred.aclose()


@dataclass
class ApiDeps:
    store: Store
    backend: BackendHandle = field(default_factory=lambda: BackendHandle(None))
    config: ApiConfig = field(default_factory=ApiConfig)
    slots: StreamSlots = field(init=False)
    passthroughs: Passthroughs = field(init=False)
    # Submitting, ending and reading jobs: the engine's part that needs no backend.
    jobs: JobService = field(init=False)

    def __post_init__(self) -> None:
        self.jobs = JobService(self.store, clusters=False)  # reads stored votes: never compares answers
        self.slots = StreamSlots(
            self.config.max_streams_per_key, self.config.max_streams, self.config.retry_after_s
        )
        c = self.config
        self.passthroughs = Passthroughs(
            RelayLimits(c.passthrough_max_bytes, c.passthrough_timeout_s, c.passthrough_idle_s),
            c.max_passthroughs_per_key,
            c.max_passthroughs,
            c.passthrough_drain_s,
            c.retry_after_s,
        )


def get_deps(request: Request) -> ApiDeps:
    deps: ApiDeps | None = getattr(request.app.state, "deps", None)
    if deps is None:  # only between process start and the end of the lifespan startup
        raise RuntimeError("the API is not started")
    return deps
