"""The FastAPI application factory.

``create_app(settings)`` opens its runtime at startup (:func:`mrsa.runtime.open_runtime`: the Redis
store, and a backend client built on first use when ``MRSA_BACKEND_URL`` is set, with every backend
setting) and closes it at shutdown; ``create_app(deps=...)`` runs on ready dependencies (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from mrsa.api import errors
from mrsa.api.auth import KeyRing
from mrsa.api.body_limit import BodyLimit
from mrsa.api.chat.routes import router as chat_router
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.api.jobs.routes import router as jobs_router
from mrsa.api.ops.prometheus import RequestMetrics, StoreGauges
from mrsa.api.ops.routes import router as ops_router
from mrsa.api.reports.routes import router as reports_router
from mrsa.api.settings import ApiSettings
from mrsa.console import serving as console
from mrsa.prices import load_optional
from mrsa.runtime import BackendOptions, StoreOptions, open_runtime

DESCRIPTION = """\
Markovian RSA (recursive self-aggregation of reasoning tails) as a job service.

Submit a problem as a job (`POST /v1/jobs`); workers run its rounds against the inference server;
follow it with `GET /v1/jobs/{id}/events` (server-sent events) and read the answer from
`GET /v1/jobs/{id}/result`. `POST /v1/chat/completions` does the same behind OpenAI's schema.

Sweep reports (`mrsa report`'s tables and plots) of the run folders under `MRSA_REPORTS_DIR` are
listed by `GET /v1/reports`. The web console is at `/ui/`.

Authentication: `Authorization: Bearer <key>` with a key from `MRSA_API_KEYS` (when set). A key
sees only its own jobs (reports are the server's, visible to every key). Errors are JSON: `message` (one line) and, for 422, `detail[].loc` naming
the field.
"""

STARTUP_WAIT_S = 30.0


def _version() -> str:
    try:
        return version("mrsa")
    except PackageNotFoundError:
        return "0"


def config_from(settings: ApiSettings) -> ApiConfig:
    return ApiConfig(
        api_keys=settings.api_key_list(),
        max_problem_bytes=settings.api_max_problem_bytes,
        max_active_jobs=settings.api_max_active_jobs,
        max_streams_per_key=settings.api_max_streams_per_key,
        max_streams=settings.api_max_streams,
        passthrough_max_bytes=settings.api_passthrough_max_bytes,
        passthrough_timeout_s=settings.api_passthrough_timeout_s,
        passthrough_idle_s=settings.api_passthrough_idle_s,
        max_passthroughs_per_key=settings.api_max_passthroughs_per_key,
        max_passthroughs=settings.api_max_passthroughs,
        passthrough_drain_s=settings.api_passthrough_drain_s,
        reports_dir=settings.reports_dir,
        prices=load_optional(settings.prices_file),
    )


# Ordinary requests: a few commands each, then the connection is free again. Event streams and
# waiting chat completions block on XREAD: they get a pool of their own (max_streams connections),
# so however many are open, ordinary requests keep these.
API_REDIS_CONNECTIONS = 256


@contextlib.asynccontextmanager
async def _open_deps(settings: ApiSettings, config: ApiConfig) -> AsyncIterator[ApiDeps]:
    """The runtime's store (retried for a while: compose may start the API before Redis is ready)
    and its deferred backend, closed on exit."""
    if not settings.redis_url:
        raise RuntimeError("the API needs Redis: set MRSA_REDIS_URL or pass --redis URL")
    store = StoreOptions(
        max_connections=API_REDIS_CONNECTIONS,
        events_connections=settings.api_max_streams,
        wait_s=STARTUP_WAIT_S,
    )
    async with open_runtime(settings, store=store, backend=BackendOptions(defer=True)) as runtime:
        backend = BackendHandle(settings.backend_url, deferred=runtime.deferred)
        yield ApiDeps(store=runtime.store, backend=backend, config=config)


def create_app(settings: ApiSettings | None = None, deps: ApiDeps | None = None) -> FastAPI:
    """The API. With ``deps`` the caller owns (and closes) the store and backend. Its config is
    built once (the price file read once)."""
    settings = settings or ApiSettings()
    config = deps.config if deps is not None else config_from(settings)
    reclaim_idle_ms = int(settings.worker_reclaim_idle_s * 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            ready = (
                deps if deps is not None else await stack.enter_async_context(_open_deps(settings, config))
            )
            app.state.deps = ready
            app.state.gauges = StoreGauges(
                ready.store, cache_s=ready.config.metrics_cache_s, reclaim_idle_ms=reclaim_idle_ms
            )
            yield

    app = FastAPI(
        title="mrsa",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.keyring = KeyRing(config.api_keys)
    if deps is not None:  # usable before the lifespan runs (ASGI transports that skip it)
        app.state.deps = deps
        app.state.gauges = StoreGauges(
            deps.store, cache_s=config.metrics_cache_s, reclaim_idle_ms=reclaim_idle_ms
        )
    errors.install(app)
    app.include_router(jobs_router)
    app.include_router(chat_router)
    app.include_router(ops_router)
    app.include_router(reports_router)
    console.install(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics)
    return app
