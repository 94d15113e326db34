"""Schemathesis (v4 API) against the app's own OpenAPI schema, in-process over ASGI, on a real
redis-server: generated valid and invalid requests for every operation, a bounded number each.
Every response must be a non-5xx that matches the documented status codes and schemas.

One check is left out: ``positive_data_acceptance`` ("a schema-valid request gets a 2xx"). The
schema cannot express the rules that need more than one field or the server's state (K ≤ N, τ ≤ β,
a prompt set that exists, the in-flight limit): those are 422/429 by design, naming the field.

No worker runs here. Jobs the fuzzer manages to create are cancelled at once by a janitor task in
the app's event loop, so ``POST /v1/chat/completions`` — which waits for its job — answers in
milliseconds (409: job cancelled) instead of waiting for a worker that never comes. Successful
chat completions are covered in ``tests/api/test_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from mrsa.api.app import create_app
from mrsa.api.deps import ApiDeps
from mrsa.api.jobs import operations as jobs
from mrsa.cli.settings import Settings
from mrsa.store.opening import open_store
from tests.plugins.redis_server import RedisServer

pytestmark = pytest.mark.redis

KEY = "fuzz-key-0b2d"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 50  # per operation and mode


class Janitor(threading.Thread):
    """Cancels every job as soon as it appears (see the module docstring). It runs on its own
    thread, event loop and Redis connection, apart from the app under test."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(name="janitor", daemon=True)
        self.redis_url = redis_url
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        async with open_store(Settings(redis_url=self.redis_url)) as store:
            deps = ApiDeps(store=store)
            while not self.done.is_set():
                for job in await store.list_jobs(None, 50):
                    if not job.status.terminal:
                        with contextlib.suppress(Exception):
                            await jobs.cancel(deps, job, "cancelled by the fuzzing janitor")
                await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    redis = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    redis.start()
    janitor = Janitor(redis.url)
    try:
        janitor.start()
        yield create_app(Settings(redis_url=redis.url, api_keys=KEY, api_max_active_jobs=4))
    finally:
        janitor.done.set()
        janitor.join(timeout=10)
        asgi.shutdown_lifespans()  # close the app's Redis pool before Redis goes away
        redis.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("GET", "/v1/jobs/{job_id}/result"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/jobs/{job_id}/rounds/{round_index}"),
    ("GET", "/v1/jobs/{job_id}/rounds/{round_index}/candidates/{index}"),
    ("GET", "/v1/reports"),
    ("GET", "/v1/reports/{name}"),
    ("GET", "/v1/reports/{name}/files/{file_name}"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]


def test_every_operation_is_fuzzed(api_schema: schemathesis.schemas.BaseSchema) -> None:
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Operations without parameters or a body have nothing to make invalid: fuzzed with valid input only.
NO_INPUT = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/reports")}
CASES = [
    pytest.param(method, path, mode, id=f"{method}-{path}-{mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or (method, path) not in NO_INPUT
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_server_errors_and_responses_match_the_schema(
    api_schema: schemathesis.schemas.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=AUTH)
        excluded = [positive_data_acceptance]
        if response.status_code == 413:  # a body over the size limit is rejected before it is read
            excluded.append(negative_data_rejection)
        case.validate_response(response, excluded_checks=excluded, headers=AUTH)

    run()
