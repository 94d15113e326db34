"""Operations endpoints: liveness, readiness and Prometheus metrics (no auth, no ``/v1`` prefix)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from mrsa.api.deps import ApiDeps, get_deps
from mrsa.api.ops.prometheus import CONTENT_TYPE, StoreGauges, render
from mrsa.api.ops.schemas import HealthResponse, ReadyResponse
from mrsa.store.base import StoreUnavailable

router = APIRouter(tags=["operations"])
Deps = Annotated[ApiDeps, Depends(get_deps)]

CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """The process is up (it does not look at Redis or the backend: see ``/readyz``)."""
    return HealthResponse()


async def _store_state(deps: ApiDeps) -> str:
    try:
        await asyncio.wait_for(deps.store.stats(), CHECK_TIMEOUT_S)
    except (StoreUnavailable, TimeoutError) as exc:
        return str(exc) or "timed out"
    return "ok"


async def _backend_state(deps: ApiDeps) -> str:
    try:
        return await asyncio.wait_for(deps.backend.health(), CHECK_TIMEOUT_S * 2)
    except TimeoutError:
        return f"{deps.backend.url} did not answer in {CHECK_TIMEOUT_S * 2:.0f}s"


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness",
    responses={503: {"model": ReadyResponse, "description": "A dependency is not reachable."}},
)
async def readyz(deps: Deps) -> JSONResponse:
    """Ready when Redis answers and, when one is configured, the backend is healthy."""
    store, backend = await asyncio.gather(_store_state(deps), _backend_state(deps))
    checks = {"store": store, "backend": backend}
    ready = store == "ok" and backend in ("ok", "not configured")
    body = ReadyResponse(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def metrics_endpoint(request: Request, deps: Deps) -> Response:
    gauges: StoreGauges = request.app.state.gauges
    # The counters are still worth serving when Redis is down; the store gauges keep their values.
    with contextlib.suppress(StoreUnavailable):
        await gauges.refresh()
    return Response(render(), media_type=CONTENT_TYPE)
