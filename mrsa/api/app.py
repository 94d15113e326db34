"""The FastAPI application factory.

``create_app(settings)`` opens Redis (and a backend client when ``MRSA_BACKEND_URL`` is set) at
startup and closes them at shutdown; ``create_app(deps=...)`` runs on ready dependencies (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from mrsa.api import errors
from mrsa.api.auth import KeyRing
from mrsa.api.body_limit import BodyLimit
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.api.metrics import RequestMetrics, StoreGauges
from mrsa.api.routes_jobs import router as jobs_router
from mrsa.api.routes_openai import router as openai_router
from mrsa.api.routes_ops import router as ops_router
from mrsa.settings import Settings, get_settings
from mrsa.store.base import StoreUnavailable

log = logging.getLogger("mrsa.api")

DESCRIPTION = """\
Markovian RSA (recursive self-aggregation of reasoning tails) as a job service.

Submit a problem as a job (`POST /v1/jobs`); workers run its rounds against the inference server;
follow it with `GET /v1/jobs/{id}/events` (server-sent events) and read the answer from
`GET /v1/jobs/{id}/result`. `POST /v1/chat/completions` does the same behind OpenAI's schema.

Authentication: `Authorization: Bearer <key>` with a key from `MRSA_API_KEYS` (when set). A key
sees only its own jobs. Errors are JSON: `message` (one line) and, for 422, `detail[].loc` naming
the field.
"""

STARTUP_WAIT_S = 30.0


def _version() -> str:
    try:
        return version("mrsa")
    except PackageNotFoundError:
        return "0"


def config_from(settings: Settings) -> ApiConfig:
    return ApiConfig(
        api_keys=settings.api_key_list(),
        max_problem_bytes=settings.api_max_problem_bytes,
        max_active_jobs=settings.api_max_active_jobs,
    )


API_REDIS_CONNECTIONS = 1024


async def _open_store(settings: Settings) -> ApiDeps:
    """Connect to Redis, retrying for a while (compose may start the API before Redis is ready)."""
    from mrsa.store.redis import open_redis

    if not settings.redis_url:
        raise RuntimeError("the API needs Redis: set MRSA_REDIS_URL or pass --redis URL")
    deadline = asyncio.get_running_loop().time() + STARTUP_WAIT_S
    while True:
        try:
            store, queue = await open_redis(
                settings.redis_url,
                prefix=settings.redis_prefix,
                max_deliveries=settings.max_deliveries,
                retention_s=settings.retention_s,
                # Every open event stream holds a connection while it blocks on XREAD.
                max_connections=API_REDIS_CONNECTIONS,
            )
            break
        except StoreUnavailable as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("%s; retrying", exc)
            await asyncio.sleep(1.0)
    backend = BackendHandle(
        settings.backend_url,
        settings.backend_kind,
        model=settings.model,
        context_length=settings.backend_context_length,
        tokenizer=settings.tokenizer,
    )
    return ApiDeps(store=store, queue=queue, backend=backend, config=config_from(settings))


def create_app(settings: Settings | None = None, deps: ApiDeps | None = None) -> FastAPI:
    """The API. With ``deps`` the caller owns (and closes) the store and backend."""
    settings = settings or get_settings()
    config = deps.config if deps is not None else config_from(settings)
    reclaim_idle_ms = int(settings.worker_reclaim_idle_s * 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = deps is None
        ready = deps if deps is not None else await _open_store(settings)
        app.state.deps = ready
        app.state.gauges = StoreGauges(
            ready.store,
            ready.queue,
            scan=ready.config.metrics_job_scan,
            cache_s=ready.config.metrics_cache_s,
            reclaim_idle_ms=reclaim_idle_ms,
        )
        try:
            yield
        finally:
            if owned:
                await ready.backend.aclose()
                aclose = getattr(ready.store, "aclose", None)
                if aclose is not None:
                    await aclose()

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
            deps.store,
            deps.queue,
            scan=config.metrics_job_scan,
            cache_s=config.metrics_cache_s,
            reclaim_idle_ms=reclaim_idle_ms,
        )
    errors.install(app)
    app.include_router(jobs_router)
    app.include_router(openai_router)
    app.include_router(ops_router)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestMetrics)
    return app
