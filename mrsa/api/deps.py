"""What the routes run on: the store (job state and task queue), the job service on that store,
an optional backend client (asked about context length and health only — the API process never
generates), and the limits.

``create_app`` builds :class:`ApiDeps` from :class:`~mrsa.settings.Settings` at startup, or takes
ready ones (tests pass a store opened on their own event loop).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from mrsa.api.chat.passthrough_slots import Passthroughs
from mrsa.api.chat.relay import RelayLimits
from mrsa.api.streams import StreamSlots
from mrsa.backends.base import Backend, BackendError
from mrsa.backends.factory import make_backend
from mrsa.backends.http import HttpOptions
from mrsa.engine.job_service import JobService
from mrsa.prices import PriceTable
from mrsa.store.base import Store

log = logging.getLogger("mrsa.api")


JSON_ESCAPE_RATIO = 6


@dataclass
class ApiConfig:
    """Limits and timings of the API (the env-backed ones come from ``Settings``)."""

    api_keys: list[str] = field(default_factory=list)
    max_problem_bytes: int = 100_000
    max_active_jobs: int = 16
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
    max_streams_per_key: int = 64
    max_streams: int = 1_000
    # Chat requests passed through to the backend (mrsa.api.chat.relay): bytes relayed, total and idle
    # deadlines, open ones per key and in all, and the time they get on shutdown.
    passthrough_max_bytes: int = 64 * 2**20
    passthrough_timeout_s: float = 1_800.0
    passthrough_idle_s: float = 300.0
    max_passthroughs_per_key: int = 64
    max_passthroughs: int = 512
    passthrough_drain_s: float = 10.0
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
    """A backend client created on first use (the server may start after the API), then reused."""

    def __init__(
        self,
        url: str | None,
        kind: str = "auto",
        *,
        model: str | None = None,
        context_length: int | None = None,
        tokenizer: Path | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.url = url if backend is None else backend.url
        self.kind = kind
        self.model = model
        self.context_length = context_length
        self.tokenizer = tokenizer
        self._backend = backend
        self._owned = backend is None
        self._lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self.url is not None

    async def get(self) -> Backend | None:
        """The client, or ``None`` when no backend is configured. Raises BackendError when the server
        cannot be reached to detect its kind (the next call tries again)."""
        if self._backend is not None or self.url is None:
            return self._backend
        async with self._lock:
            if self._backend is None:
                options = HttpOptions(timeout_s=30.0, max_retries=1, concurrency=4)
                self._backend = await make_backend(
                    self.url,
                    self.kind,
                    model=self.model,
                    options=options,
                    context_length=self.context_length,
                    tokenizer=self.tokenizer,
                )
        return self._backend

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
        if self._owned and self._backend is not None:
            await self._backend.aclose()
            self._backend = None


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
