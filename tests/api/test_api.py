"""The REST API in-process (httpx + ASGITransport) on a real redis-server.

Most tests look at what the API stored; the ones that need a job to finish run an in-process worker
on the same Redis against the real embedded backend (tiny jobs: N=2, β ≤ 24).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any, cast

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client import REGISTRY

from mrsa.api.app import create_app
from mrsa.api.auth import owner_of
from mrsa.api.chat.schemas import ChatCompletionRequest
from mrsa.api.deps import ApiConfig, ApiDeps, BackendHandle
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.backends.wire import MockWire, WireError, WireRequest, WireResponse
from mrsa.cli.settings import Settings
from mrsa.domain import Event, JobSpec, JobStatus
from mrsa.engine.job_service import JobService
from mrsa.engine.prompts import conversation_problem
from mrsa.params import RSAParams
from mrsa.store.base import StoreUnavailable
from mrsa.store.opening import open_store
from mrsa.store.redis import RedisStore
from tests.plugins.redis_server import RedisServer
from workers.inprocess import InProcessRunner

pytestmark = pytest.mark.redis

KEY1 = "test-key-one-7d1e"
KEY2 = "test-key-two-93ab"
H1 = {"Authorization": f"Bearer {KEY1}"}
H2 = {"Authorization": f"Bearer {KEY2}"}
# Tiny jobs: 2 candidates per round, 1 aggregation round, 24 decode tokens each.
TINY: dict[str, Any] = {"preset": "smoke", "params": {"population": 2, "subset": 2, "budget": 24, "tail": 12}}
WAIT_S = 120.0


def job_body(problem: str = "What is 7*6?", **extra: Any) -> dict[str, Any]:
    return {"problem": problem, **TINY, **extra}


def make_app(
    store: Any, backend: OpenAICompatibleBackend | None = None, **config: Any
) -> tuple[FastAPI, ApiDeps]:
    deps = ApiDeps(
        store=store,
        backend=BackendHandle(None, backend=backend) if backend is not None else BackendHandle(None),
        config=replace(ApiConfig(api_keys=[KEY1, KEY2]), **config),
    )
    return create_app(Settings(), deps), deps


@contextlib.asynccontextmanager
async def client_for(app: FastAPI, raise_errors: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=WAIT_S) as client:
        yield client


@pytest.fixture
async def api(redis_store: RedisStore) -> AsyncIterator[httpx.AsyncClient]:
    app, _ = make_app(redis_store)
    async with client_for(app) as client:
        yield client


def sse_events(text: str) -> Iterator[tuple[str | None, str | None, str]]:
    """(id, event, data) of each event of a text/event-stream body."""
    for block in re.split(r"\r?\n\r?\n", text):
        fields: dict[str, list[str]] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        if "data" in fields:
            yield (fields.get("id", [None])[0], fields.get("event", [None])[0], "\n".join(fields["data"]))


def assert_no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text


# -- auth -----------------------------------------------------------------------------------------


async def test_auth_missing_and_invalid_key(api: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY1}"}):
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc")):
            r = await api.request(method, path, json=job_body(), headers=headers)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["message"] in (
                "invalid API key",
                "missing API key: send 'Authorization: Bearer <key>'",
            )
    r = await api.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"  # OpenAI's error shape on that path


async def test_another_keys_job_is_404_and_keys_are_not_stored(
    api: httpx.AsyncClient, redis_store: RedisStore
) -> None:
    r = await api.post("/v1/jobs", json=job_body(), headers=H1)
    assert r.status_code == 202
    job_id = r.json()["id"]
    base = f"/v1/jobs/{job_id}"
    for method, path in (
        ("GET", base),
        ("GET", f"{base}/result"),
        ("GET", f"{base}/events"),
        ("POST", f"{base}/cancel"),
        ("GET", f"{base}/rounds/0/candidates/0"),
    ):
        r = await api.request(method, path, headers=H2)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["message"] == f"no job {job_id!r}"  # the same answer as for an unknown id
    assert (await api.get("/v1/jobs/0123456789abcdef", headers=H2)).json()["message"].startswith("no job")
    assert [j["id"] for j in (await api.get("/v1/jobs", headers=H1)).json()["jobs"]] == [job_id]
    assert (await api.get("/v1/jobs", headers=H2)).json()["jobs"] == []
    assert (await api.get(base, headers=H1)).status_code == 200

    store = redis_store
    job = await store.get_job(job_id)
    assert job is not None and job.owner == owner_of(KEY1) != KEY1
    # The key itself is nowhere in Redis: not in key names, not in any value.
    client = store.client
    for name in await client.keys("*"):
        assert KEY1 not in name
        kind = await client.type(name)
        if kind == "hash":
            assert not any(KEY1 in v for v in (await client.hgetall(name)).values())
        elif kind == "string":
            assert KEY1 not in (await client.get(name) or "")


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (job_body(params={"population": 3, "subset": 5}), "subset"),  # K > N
        (job_body(params={"budget": 64, "tail": 128}), "tail"),  # τ > β
        (job_body(problem=""), "problem"),
        (job_body(problem="   \n "), "problem"),
        (job_body(problem="x" * 100_001), "problem"),
        (job_body(preset="nope"), "preset"),
        (job_body(params={"population": 0}), "population"),
        (job_body(params={"sampling": {"temperature": -1}}), "temperature"),
        (job_body(params={"chunk": 16, "carryover": 16}), "carryover"),
        (job_body(params={"prompts": "missing"}), "prompts"),
        (job_body(params={"population": 12, "subset": 2, "islands": 3}), "islands"),
        (job_body(params={"stop_agreement": 0.8, "stop_min_round": 9}), "stop_min_round"),
        (job_body(params={"token_budget": 0}), "token_budget"),
        (job_body(params={"populaton": 4}), "populaton"),
        ({"problem": 42, "preset": "smoke"}, "problem"),
        ({"preset": "smoke"}, "problem"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await api.post("/v1/jobs", json=body, headers=H1)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["detail"][0]["loc"][-1] == field
    assert field in data["message"]
    assert (await api.get("/v1/jobs", headers=H1)).json()["jobs"] == []  # nothing was enqueued


async def test_malformed_requests_are_4xx(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/jobs", content=b"{not json", headers={**H1, "Content-Type": "application/json"})
    assert r.status_code == 422
    too_big = ApiConfig().max_body_bytes + 1
    r = await api.post("/v1/jobs", content=b"x" * too_big, headers={**H1, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["message"]
    r = await api.get("/v1/jobs", params={"limit": 0}, headers=H1)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]
    r = await api.post("/v1/jobs", json=job_body(), headers={**H1, "Idempotency-Key": "has space"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    r = await api.get("/v1/jobs/abc/events", headers={**H1, "Last-Event-ID": "../../x"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]


@pytest.mark.embedded
async def test_budget_over_the_backends_context_is_422(
    redis_store: RedisStore, embedded_backend: OpenAICompatibleBackend
) -> None:
    app, _ = make_app(redis_store, backend=embedded_backend)
    async with client_for(app) as api:
        r = await api.post("/v1/jobs", json={"problem": "What is 7*6?", "preset": "zaya1"}, headers=H1)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "params", "budget"]
        assert r.json()["message"].startswith("budget:") and "8192" in r.json()["message"]
        # The same problem with the tiny preset fits.
        assert (await api.post("/v1/jobs", json=job_body(), headers=H1)).status_code == 202


# -- submission semantics -------------------------------------------------------------------------


async def test_idempotency_key_replays_the_same_job(api: httpx.AsyncClient, redis_store: RedisStore) -> None:
    headers = {**H1, "Idempotency-Key": "order-1"}
    first = await api.post("/v1/jobs", json=job_body(), headers=headers)
    again = await api.post("/v1/jobs", json=job_body(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert first.headers["location"] == again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    assert len((await api.get("/v1/jobs", headers=H1)).json()["jobs"]) == 1
    assert (await redis_store.stats()).queued == 2  # round 0 enqueued once: N=2 tasks

    # The key with another request is refused; another key's identical key is its own.
    r = await api.post("/v1/jobs", json=job_body(problem="What is 8*6?"), headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    other = await api.post("/v1/jobs", json=job_body(), headers={**H2, "Idempotency-Key": "order-1"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


async def test_in_flight_limit_is_429_with_retry_after(
    redis_store: RedisStore,
) -> None:
    app, _ = make_app(redis_store, max_active_jobs=2, retry_after_s=7)
    async with client_for(app) as api:
        ids = [(await api.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"] for _ in range(2)]
        refused = await api.post("/v1/jobs", json=job_body(), headers={**H1, "Idempotency-Key": "k-3"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert "too many jobs in flight" in refused.json()["message"]
        # Other keys are not affected.
        assert (await api.post("/v1/jobs", json=job_body(), headers=H2)).status_code == 202
        # A slot frees up when a job ends; the retried request (same key) now gets its job.
        assert (await api.post(f"/v1/jobs/{ids[0]}/cancel", headers=H1)).status_code == 200
        retried = await api.post("/v1/jobs", json=job_body(), headers={**H1, "Idempotency-Key": "k-3"})
        assert retried.status_code == 202 and not retried.json()["replayed"]
        again = await api.post("/v1/jobs", json=job_body(), headers={**H1, "Idempotency-Key": "k-3"})
        assert again.json()["id"] == retried.json()["id"] and again.json()["replayed"]


async def test_cancel(api: httpx.AsyncClient, redis_store: RedisStore) -> None:
    job_id = (await api.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"]
    assert (await api.get(f"/v1/jobs/{job_id}/result", headers=H1)).status_code == 409  # not ready
    r = await api.post(f"/v1/jobs/{job_id}/cancel", headers=H1)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "cancelled through the API"
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=H1)).status_code == 200  # idempotent
    result = (await api.get(f"/v1/jobs/{job_id}/result", headers=H1)).json()
    assert (result["status"], result["answer"]) == ("cancelled", None)
    events = list(sse_events((await api.get(f"/v1/jobs/{job_id}/events", headers=H1)).text))
    assert [e[1] for e in events] == ["status", "done"]
    assert json.loads(events[-1][2])["status"] == "cancelled"
    store = redis_store
    assert await store.count_active(owner_of(KEY1)) == 0

    # A job that already succeeded cannot be cancelled.
    done_id = (await api.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"]
    job = await store.get_job(done_id)
    assert job is not None
    await JobService(store).finish(done_id)
    r = await api.post(f"/v1/jobs/{done_id}/cancel", headers=H1)
    assert r.status_code == 409 and "already succeeded" in r.json()["message"]


# -- a job that runs: events, candidates, result, metrics -----------------------------------------


@pytest.mark.embedded
async def test_job_runs_events_resume_candidates_and_metrics(
    redis_store: RedisStore, embedded_backend: OpenAICompatibleBackend
) -> None:
    store = redis_store
    app, _ = make_app(redis_store)
    async with client_for(app) as api:
        r = await api.post("/v1/jobs", json=job_body(), headers=H1)
        job_id = r.json()["id"]
        queued = (await api.get(f"/v1/jobs/{job_id}", headers=H1)).json()
        assert (queued["status"], queued["progress"]) == (
            "queued",
            {"round": 0, "rounds": 1, "population": 2, "done": 0},
        )
        metrics = (await api.get("/metrics")).text
        assert 'mrsa_jobs{status="queued"} 1.0' in metrics
        assert "mrsa_queue_tasks_queued 2.0" in metrics

        async with InProcessRunner(embedded_backend, store, capacity=1) as runner:
            # The event stream ends by itself once the job is over (the worker runs meanwhile).
            stream = await asyncio.wait_for(api.get(f"/v1/jobs/{job_id}/events", headers=H1), WAIT_S)
            result = await asyncio.wait_for(runner.wait(job_id), WAIT_S)
        assert result.status == JobStatus.succeeded, result.error
        assert stream.headers["content-type"].startswith("text/event-stream")

        events = list(sse_events(stream.text))
        kinds = [e[1] for e in events]
        parsed = [Event.model_validate_json(e[2]) for e in events]
        assert kinds[:2] == ["status", "status"] and kinds[-1] == "done"
        assert [p.status for p in parsed[:2]] == [JobStatus.queued, JobStatus.running]
        assert kinds.count("candidate") == 4 and kinds.count("round") == 1
        round_at = kinds.index("round")
        assert {p.round for p in parsed[:round_at] if p.type == "candidate"} == {0}
        assert {p.round for p in parsed[round_at:] if p.type == "candidate"} == {1}
        assert parsed[-1].status == JobStatus.succeeded
        ids = [e[0] or "" for e in events]
        assert all(ids) and len(set(ids)) == len(ids)

        # Resume after the third event: exactly the rest, in the same order.
        resumed = await api.get(f"/v1/jobs/{job_id}/events", headers={**H1, "Last-Event-ID": ids[2]})
        assert [e[0] for e in sse_events(resumed.text)] == ids[3:]
        after_all = await api.get(f"/v1/jobs/{job_id}/events", headers={**H1, "Last-Event-ID": ids[-1]})
        assert list(sse_events(after_all.text)) == []

        # Result: T+1 rounds of N candidates.
        res = (await api.get(f"/v1/jobs/{job_id}/result", headers=H1)).json()
        assert res["status"] == "succeeded"
        assert [len(rnd["candidates"]) for rnd in res["rounds"]] == [2, 2]
        assert res["usage"]["requests"] == 4

        # Candidate inspection: the prompt holds the problem and, in round 1, its parents' tails.
        c0 = (await api.get(f"/v1/jobs/{job_id}/rounds/0/candidates/1", headers=H1)).json()
        assert "What is 7*6?" in c0["prompt"] and c0["trace"] and c0["round"] == 0
        c1 = (await api.get(f"/v1/jobs/{job_id}/rounds/1/candidates/0", headers=H1)).json()
        assert sorted(c1["parents"]) == [0, 1]
        for parent in c1["parents"]:
            tail = (await api.get(f"/v1/jobs/{job_id}/rounds/0/candidates/{parent}", headers=H1)).json()[
                "tail"
            ]
            assert tail.strip() and tail.strip() in c1["prompt"]
        for missing in ("rounds/2/candidates/0", "rounds/0/candidates/2"):
            r = await api.get(f"/v1/jobs/{job_id}/{missing}", headers=H1)
            assert r.status_code == 404 and "no candidate" in r.json()["message"]

        view = (await api.get(f"/v1/jobs/{job_id}", headers=H1)).json()
        assert view["status"] == "succeeded" and view["finished_at"] is not None

        metrics = (await api.get("/metrics")).text
        # Request counters are process-wide (other tests add to them): look for the series only.
        assert (
            'mrsa_api_requests_total{method="GET",route="/v1/jobs/{job_id}/events",status="200"}' in metrics
        )
        for name in (
            "mrsa_queue_tasks_in_flight",
            "mrsa_decode_tokens_total",
            "mrsa_backend_request_seconds_bucket",
        ):
            assert name in metrics


# -- the OpenAI-compatible endpoint ---------------------------------------------------------------


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "You are a careful mathematician."},
            {"role": "user", "content": "What is 6*7? Put the answer in \\boxed{}."},
        ],
        "preset": "smoke",
        "population": 2,
        "budget": 24,
        "tail": 12,
        **extra,
    }


@pytest.mark.embedded
async def test_openai_facade_with_the_sdk(
    redis_store: RedisStore, embedded_backend: OpenAICompatibleBackend
) -> None:
    store = redis_store
    app, _ = make_app(redis_store)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=WAIT_S) as http,
        InProcessRunner(embedded_backend, store, capacity=1),
    ):
        # The SDK's own client class may differ between releases; any httpx-compatible client works.
        sdk = openai.AsyncOpenAI(
            base_url="http://api.test/v1", api_key=KEY1, http_client=cast(Any, http), max_retries=0
        )
        body = chat_body()
        extra = {k: body[k] for k in ("preset", "population", "budget", "tail")}
        completion = await sdk.chat.completions.create(
            model=body["model"], messages=body["messages"], extra_body=extra
        )
        assert completion.object == "chat.completion"
        assert completion.model == body["model"]
        message = completion.choices[0].message
        assert message.role == "assistant" and message.content
        assert completion.choices[0].finish_reason == "stop"
        rsa = completion.model_extra["mrsa"] if completion.model_extra else {}
        job_id = rsa["job_id"]
        result = (await http.get(f"/v1/jobs/{job_id}/result", headers=H1)).json()
        assert result["status"] == "succeeded"
        if result["answer"] is not None:
            assert f"\\boxed{{{result['answer']}}}" in message.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens == result["usage"]["decode_tokens"]
        assert completion.usage.prompt_tokens == result["usage"]["prompt_tokens"]
        job = await store.get_job(job_id)
        assert job is not None and job.spec.model == body["model"]  # the model id is passed through
        # The whole conversation is the problem: the system prompt, then the user's question.
        assert job.spec.problem == conversation_problem([(m["role"], m["content"]) for m in body["messages"]])
        assert job.spec.problem.startswith("System: ") and job.spec.problem.endswith(
            body["messages"][-1]["content"]
        )

        # Streaming: chunks in OpenAI's schema, usage at the end, then [DONE].
        stream = await sdk.chat.completions.create(
            model=body["model"],
            messages=body["messages"],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={**extra, "seed": 5},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None

        # Bad RSA parameters are 422 in OpenAI's error shape, so the SDK raises with the message.
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await sdk.chat.completions.create(
                model="m", messages=body["messages"], extra_body={"population": 2, "subset": 3}
            )
        assert "subset" in caught.value.message


@pytest.mark.embedded
async def test_openai_keepalive_and_raw_stream(
    redis_store: RedisStore, embedded_backend: OpenAICompatibleBackend
) -> None:
    store = redis_store
    # Hold nothing: commit at once and send keep-alive whitespace every 0.1 s.
    app, _ = make_app(redis_store, chat_hold_s=0.0, keepalive_s=0.1)
    async with client_for(app) as api, InProcessRunner(embedded_backend, store, capacity=1):
        r = await api.post("/v1/chat/completions", json=chat_body(), headers=H1)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.text.startswith(" ") and r.text.lstrip().startswith("{")  # leading whitespace…
        ChatCompletion.model_validate(json.loads(r.text))  # …is still one valid JSON document

        r = await api.post("/v1/chat/completions", json=chat_body(stream=True), headers=H1)
        assert r.headers["content-type"].startswith("text/event-stream")
        assert re.search(r"^: round \d/1", r.text, re.MULTILINE)  # progress comments keep it alive
        data = [d for _, _, d in sse_events(r.text)]
        assert data[-1] == "[DONE]"
        for d in data[:-1]:
            ChatCompletionChunk.model_validate_json(d)


async def test_openai_client_that_leaves_while_its_response_is_held_cancels_the_job(
    redis_store: RedisStore,
) -> None:
    """No worker runs the job: the response is held (``chat_hold_s``) when the client goes away,
    and the job is cancelled rather than left queued for nobody."""
    store = redis_store
    app, _ = make_app(redis_store, chat_hold_s=120.0, events_block_ms=100)
    async with served(app) as url, httpx.AsyncClient(base_url=url, headers=H1) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            await client.post("/v1/chat/completions", json=chat_body(), timeout=httpx.Timeout(30.0, read=1.0))
        (job,) = (await client.get("/v1/jobs")).json()["jobs"]
        for _ in range(200):
            current = await store.get_job(job["id"])
            if current is not None and current.status.terminal:
                break
            await asyncio.sleep(0.05)
    assert current is not None and current.status == JobStatus.cancelled
    assert current.error == "cancelled: the chat-completions client disconnected"


async def test_openai_failed_job_is_502_without_retry(
    redis_store: RedisStore,
) -> None:
    store = redis_store
    app, _ = make_app(redis_store)

    async def fail_the_job() -> None:
        for _ in range(200):
            jobs = await store.list_jobs(owner_of(KEY1))
            if jobs:
                break
            await asyncio.sleep(0.05)
        await JobService(store).fail(jobs[0].id, "http://127.0.0.1:9 is unreachable")

    async with client_for(app) as api:
        failer = asyncio.create_task(fail_the_job())
        r = await api.post("/v1/chat/completions", json=chat_body(), headers=H1)
        await failer
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["type"] == "job_failed"
    assert "unreachable" in r.json()["error"]["message"]


async def test_openai_validation(api: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "m", "messages": [{"role": "system", "content": "x"}], "preset": "smoke"}, "messages"),
        ({"model": "m", "messages": [], "preset": "smoke"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "preset": "smoke"}, "model"),
        (chat_body(n=0), "n"),  # n > 1 is passed through to the backend (tests/api/test_chat_proxy.py)
        (chat_body(subset=3), "subset"),
        (chat_body(preset="nope"), "preset"),
    ]
    no_budget = {k: v for k, v in chat_body(max_tokens=8).items() if k != "budget"}
    cases.append((no_budget, "tail"))  # max_tokens stands for β when budget is not given; τ=12 > 8
    for body, field in cases:
        r = await api.post("/v1/chat/completions", json=body, headers=H1)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"][-1] == field, r.json()
        assert r.json()["error"]["param"]


# -- operations -----------------------------------------------------------------------------------


async def test_health_readiness_and_store_outage(redis_server: RedisServer, redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store)
    async with client_for(app) as api:
        assert (await api.get("/healthz")).json() == {"status": "ok"}
        ready = await api.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"store": "ok", "backend": "not configured"}}
        redis_server.stop()
        down = await api.get("/readyz")
        assert down.status_code == 503 and "redis" in down.json()["checks"]["store"]
        r = await api.post("/v1/jobs", json=job_body(), headers=H1)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert (await api.get("/metrics")).status_code == 200
        assert (await api.get("/healthz")).status_code == 200


class BrokenStore:
    """A store whose reads fail with a bug (to see the unexpected-error handler)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def list_jobs(self, owner: str | None = None, limit: int = 100) -> Any:
        raise RuntimeError("boom")

    async def get_job(self, job_id: str) -> Any:
        raise StoreUnavailable("redis at redis://x is unavailable")


async def test_unexpected_errors_are_json_with_an_id(
    redis_store: RedisStore,
) -> None:
    """The safety net for bugs: a JSON 500 with an id, never a traceback (bad input never gets here)."""
    store = redis_store
    app, _ = make_app(BrokenStore(store))
    async with client_for(app, raise_errors=False) as api:
        r = await api.get("/v1/jobs", headers=H1)
        assert r.status_code == 500
        body = r.json()
        assert re.fullmatch(r"[0-9a-f]{12}", body["error_id"]) and body["error_id"] in body["message"]
        assert "Traceback" not in r.text and "boom" not in r.text
        r = await api.get("/v1/jobs/abc", headers=H1)
        assert r.status_code == 503 and r.headers["retry-after"]


async def test_openapi_schema_comes_from_the_models(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    paths = set(schema["paths"])
    assert paths >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/result",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/rounds/{round_index}/candidates/{index}",
        "/v1/chat/completions",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    props = schema["components"]["schemas"]["ParamOverrides"]["properties"]
    for name, field in RSAParams.model_fields.items():
        if name == "sampling":
            continue
        assert props[name]["description"] == field.description
    population = props["population"]["anyOf"][0]
    assert (population["minimum"], population["maximum"]) == (1, 512)
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["subset"]["description"] == RSAParams.model_fields["subset"].description
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "422" in schema["paths"]["/v1/jobs"]["post"]["responses"]


# -- hardening (issue 9): the context check, streams, headers, metrics, limits, races -------------


def fake_backend(tokenize: Any, models: dict[str, Any]) -> OpenAICompatibleBackend:
    """A vLLM-dialect client on a transport answering ``/v1/models`` and ``/tokenize`` as given
    (failure injection: a server that lies)."""

    def handle(request: WireRequest) -> WireResponse:
        if request.path == "/v1/models":
            return WireResponse.of_json(200, models)
        if request.path == "/tokenize":
            return WireResponse.of_json(200, tokenize)
        return WireResponse.of_json(404, {"error": "no"})

    return OpenAICompatibleBackend("http://backend.test", dialect="vllm", wire=MockWire(handle))


MODELS_WITH_CONTEXT = {"data": [{"id": "m", "max_model_len": 4096}]}


@pytest.mark.parametrize(
    ("tokenize", "models", "reason"),
    [
        # The client validates the reply (a malformed-reply backend error, retried, then final).
        ({"tokens": ["a", "b"]}, MODELS_WITH_CONTEXT, "tokenize reply has no list of token ids"),
        ({"tokens": [{"no_id": 1}]}, MODELS_WITH_CONTEXT, "tokenize reply has no list of token ids"),
        ({"tokens": [1, 2, 3]}, {"data": [{"id": "m"}]}, "did not report its context length"),
    ],
)
async def test_context_check_that_cannot_run_accepts_the_job_with_a_warning(
    redis_store: RedisStore,
    caplog: pytest.LogCaptureFixture,
    tokenize: Any,
    models: dict[str, Any],
    reason: str,
) -> None:
    """A backend that answers garbage is not the client's fault (never a 500), and a check that
    could not run is said so: in the log and in the job's warnings."""
    backend = fake_backend(tokenize, models)
    app, _ = make_app(redis_store, backend=backend)
    async with client_for(app) as api:
        r = await api.post("/v1/jobs", json=job_body(), headers=H1)
        assert r.status_code == 202, r.text
        (warning,) = r.json()["warnings"]
        assert warning.startswith("context check skipped:") and reason in warning
        assert (await api.get(f"/v1/jobs/{r.json()['id']}", headers=H1)).json()["warnings"] == [warning]
    assert any("context check skipped" in rec.getMessage() for rec in caplog.records)
    await backend.aclose()


async def test_context_check_with_a_model_id_reads_the_context_of_that_model(
    redis_store: RedisStore,
) -> None:
    """The model id given (MRSA_MODEL) does not stop the client from reading the context."""
    backend = fake_backend({"tokens": [1] * 10}, {"data": [{"id": "x"}, {"id": "m", "max_model_len": 512}]})
    backend.model = "m"
    app, _ = make_app(redis_store, backend=backend)
    async with client_for(app) as api:
        r = await api.post("/v1/jobs", json={"problem": "What is 7*6?", "preset": "zaya1"}, headers=H1)
        assert r.status_code == 422 and "512" in r.json()["message"], r.text
        ok = await api.post("/v1/jobs", json=job_body(), headers=H1)
        assert ok.status_code == 202 and ok.json()["warnings"] == []
    await backend.aclose()


async def test_with_a_model_id_the_context_lookup_is_best_effort_and_retried() -> None:
    """A worker given its kind and model starts while the server is down (info() does not fail),
    and the context is read once the server answers (a failed lookup is not cached)."""
    up = False

    def handle(request: WireRequest) -> WireResponse:
        if not up:
            raise WireError("ConnectError: connection refused")
        return WireResponse.of_json(200, {"data": [{"id": "m", "max_model_len": 2048}]})

    backend = OpenAICompatibleBackend("http://backend.test", dialect="vllm", model="m", wire=MockWire(handle))
    assert (await backend.info()).context_length is None
    up = True
    assert (await backend.info()).context_length == 2048
    await backend.aclose()


@pytest.mark.embedded
async def test_the_embedded_server_reports_its_context_and_the_api_checks_it(
    redis_store: RedisStore, embedded_url: str
) -> None:
    """``mrsa backend`` serves /v1/models with max_model_len as vLLM does, so a zaya1 job (β=40,960)
    is refused against the 8,192-token model by a client told nothing about it."""
    async with httpx.AsyncClient(timeout=10) as http:
        models = (await http.get(f"{embedded_url}/v1/models")).json()
    assert models["data"][0]["max_model_len"] == 8192
    backend = OpenAICompatibleBackend(embedded_url, dialect="llama-cpp-python")
    assert (await backend.info()).context_length == 8192
    app, _ = make_app(redis_store, backend=backend)
    async with client_for(app) as api:
        r = await api.post("/v1/jobs", json={"problem": "What is 7*6?", "preset": "zaya1"}, headers=H1)
        assert r.status_code == 422 and "8192" in r.json()["message"], r.text
    await backend.aclose()


async def test_last_event_id_over_64_bits_is_refused(api: httpx.AsyncClient) -> None:
    job_id = (await api.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"]
    for bad in ("18446744073709551616-0", "0-18446744073709551616", "99999999999999999999"):
        r = await api.get(f"/v1/jobs/{job_id}/events", headers={**H1, "Last-Event-ID": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
    # The largest id Redis accepts is fine (and nothing comes after it).
    await api.post(f"/v1/jobs/{job_id}/cancel", headers=H1)
    top = "18446744073709551615-18446744073709551615"
    r = await api.get(f"/v1/jobs/{job_id}/events", headers={**H1, "Last-Event-ID": top})
    assert r.status_code == 200, r.text


async def test_made_up_methods_and_paths_do_not_create_metric_series(api: httpx.AsyncClient) -> None:
    def series() -> int:
        return sum(len(m.samples) for m in REGISTRY.collect() if m.name.startswith("mrsa_api_request"))

    async def probe(i: int) -> None:
        await api.request(f"METHOD{i}", "/v1/jobs")
        await api.request(f"METHOD{i}", f"/random/{i}")
        await api.get(f"/v1/jobs/job{i}/nothing/{i}")

    await probe(-1)  # the series of the 'other' method and the 'unmatched' route, once
    before = series()
    for i in range(50):
        await probe(i)
    assert series() == before
    text = (await api.get("/metrics")).text
    assert 'method="other"' in text and "METHOD" not in text and "/random/" not in text


async def test_size_limits_are_413_and_count_the_problem_as_utf8(api: httpx.AsyncClient) -> None:
    json_headers = {**H1, "Content-Type": "application/json"}

    async def chunked_50mb() -> AsyncIterator[bytes]:
        for _ in range(800):
            yield b"x" * 65_536

    r = await api.post("/v1/jobs", content=chunked_50mb(), headers=json_headers)
    assert r.status_code == 413, r.text
    assert "larger than the limit" in r.json()["message"]
    nested = b"[" * 100_000 + b"]" * 100_000
    r = await api.post("/v1/jobs", content=nested, headers=json_headers)
    assert r.status_code == 413, r.text
    assert "nested too deeply" in r.json()["message"]
    # 96,000 bytes of UTF-8 (24,000 emoji) under the 100,000-byte limit, escaped by the client as
    # \\ud83d\\ude00 (12 bytes each): accepted. Control characters (6 bytes each) as well.
    for problem in ("\U0001f600" * 24_000, "1+1=?" + "\x01" * 99_000):
        assert len(problem.encode()) < 100_000
        body = json.dumps(job_body(problem=problem), ensure_ascii=True).encode()
        r = await api.post("/v1/jobs", content=body, headers=json_headers)
        assert r.status_code == 202, r.text[:300]
    # Over the limit counted as UTF-8: 422 naming the field, however it is escaped.
    body = json.dumps(job_body(problem="\U0001f600" * 25_001), ensure_ascii=True).encode()
    r = await api.post("/v1/jobs", content=body, headers=json_headers)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "problem"], r.text[:300]


async def test_ignored_chat_fields_are_named(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = redis_store
    app, _ = make_app(redis_store)

    async def fail_the_job() -> None:
        for _ in range(200):
            found = await store.list_jobs(owner_of(KEY1))
            if found:
                break
            await asyncio.sleep(0.05)
        await JobService(store).fail(found[0].id, "stopped by the test")

    body = {**chat_body(), "populaton": 4, "user": "u-1", "bad name\n": 1}
    async with client_for(app) as api:
        failer = asyncio.create_task(fail_the_job())
        r = await api.post("/v1/chat/completions", json=body, headers=H1)
        await failer
        schema = (await api.get("/openapi.json")).json()
    assert r.status_code == 502
    assert r.headers["x-mrsa-ignored-fields"] == "(unprintable name), populaton, user"
    responses = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "X-Mrsa-Ignored-Fields" in responses["200"]["headers"]
    assert any("populaton" in rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING")
    # Known fields are not reported.
    assert ChatCompletionRequest.model_validate(chat_body()).ignored_fields() == []


async def test_in_flight_limit_holds_under_concurrent_submissions(
    redis_store: RedisStore,
) -> None:
    store = redis_store
    app, _ = make_app(redis_store, max_active_jobs=3)
    async with client_for(app) as api:
        replies = await asyncio.gather(
            *(api.post("/v1/jobs", json=job_body(), headers=H1) for _ in range(12))
        )
    codes = sorted(r.status_code for r in replies)
    assert codes == [202] * 3 + [429] * 9, codes
    assert await store.count_active(owner_of(KEY1)) == 3


async def test_jobs_by_status_gauge_counts_every_job(
    redis_store: RedisStore,
) -> None:
    """More jobs than the old 1,000-job scan: the gauge is exact (an index kept at each transition)."""
    store = redis_store
    service = JobService(store)
    spec = JobSpec(
        problem="What is 7*6?", params=RSAParams(population=1, subset=1, rounds=0, budget=8, tail=4)
    )
    ids = [(await service.submit(spec, owner="o")).id for _ in range(1_100)]
    assert await store.mark_running(ids[0])
    assert await store.mark_running(ids[1])
    await store.cancel_job(ids[1])
    await store.cancel_job(ids[2])
    await service.fail(ids[3], "boom")
    app, _ = make_app(redis_store, metrics_cache_s=0.0)
    async with client_for(app) as api:
        text = (await api.get("/metrics")).text
    gauge = dict(re.findall(r'^mrsa_jobs\{status="(\w+)"\} ([0-9.e+]+)$', text, re.M))
    assert {k: float(v) for k, v in gauge.items()} == {
        "queued": 1_096,
        "running": 1,
        "succeeded": 0,
        "failed": 1,
        "cancelled": 2,
    }


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real uvicorn server on loopback (streams need a transport that streams)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_event_streams_are_capped_per_key_and_leave_the_pool_to_other_requests(
    redis_server: RedisServer,
) -> None:
    """One key's streams cannot take the connections other keys' requests need."""
    async with open_store(
        Settings(redis_url=redis_server.url), max_connections=4, events_connections=6
    ) as store:
        deps = ApiDeps(
            store=store,
            config=ApiConfig(
                api_keys=[KEY1, KEY2], max_streams_per_key=5, max_streams=6, events_block_ms=10_000
            ),
        )
        app = create_app(Settings(), deps)
        async with served(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            job_id = (await client.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"]
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(5):
                    r = await stack.enter_async_context(
                        client.stream("GET", f"/v1/jobs/{job_id}/events", headers=H1)
                    )
                    assert r.status_code == 200
                refused = await client.get(f"/v1/jobs/{job_id}/events", headers=H1)
                assert refused.status_code == 429 and refused.headers["retry-after"]
                assert "MRSA_API_MAX_STREAMS_PER_KEY" in refused.json()["message"]
                # Other keys' ordinary requests are served at once (the streams use their own pool).
                for _ in range(10):
                    r = await asyncio.wait_for(client.get("/v1/jobs", headers=H2), 5)
                    assert r.status_code == 200
                # The API-wide cap: one more stream of another key fits, the next is 503.
                other = (await client.post("/v1/jobs", json=job_body(), headers=H2)).json()["id"]
                r = await stack.enter_async_context(
                    client.stream("GET", f"/v1/jobs/{other}/events", headers=H2)
                )
                assert r.status_code == 200
                full = await client.get(f"/v1/jobs/{other}/events", headers=H2)
                assert full.status_code == 503 and "MRSA_API_MAX_STREAMS" in full.json()["message"]
            # Closed streams give their slots back.
            for _ in range(100):
                if not deps.slots.open:
                    break
                await asyncio.sleep(0.05)
            assert not deps.slots.open
            await client.post(f"/v1/jobs/{job_id}/cancel", headers=H1)
            r = await client.get(f"/v1/jobs/{job_id}/events", headers=H1)
            assert r.status_code == 200 and "done" in r.text


class FlakyEvents:
    """A store whose event reads fail after the first batch (Redis going away mid-stream)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read_events(self, job_id: str, after: str | None, block_ms: int, count: int = 100) -> Any:
        self.reads += 1
        if self.reads > 1:
            raise StoreUnavailable("redis at redis://x is unavailable")
        return await self._inner.read_events(job_id, after, block_ms=block_ms, count=count)


async def test_an_event_stream_ends_cleanly_when_the_store_goes_away(
    redis_store: RedisStore,
) -> None:
    store = redis_store
    app, _ = make_app(FlakyEvents(store))  # its event reads fail; everything else is the store's
    async with client_for(app) as api:  # raises on an unhandled exception in the app
        job_id = (await api.post("/v1/jobs", json=job_body(), headers=H1)).json()["id"]
        r = await api.get(f"/v1/jobs/{job_id}/events", headers=H1)
    assert r.status_code == 200
    events = list(sse_events(r.text))
    assert [e[1] for e in events] == ["status"] and events[0][0]  # the id to resume from


# -- one submission pipeline (mrsa/api/submission.py) ---------------------------------------------


def jobs_submitted(endpoint: str) -> float:
    return REGISTRY.get_sample_value("mrsa_api_jobs_submitted_total", {"endpoint": endpoint}) or 0.0


async def test_job_and_chat_routes_make_the_same_job_through_one_pipeline(redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store)
    owner = owner_of(KEY1)
    messages = [{"role": "user", "content": "What is 7*6?"}]
    knobs = {"population": 2, "subset": 2, "budget": 24, "tail": 12, "seed": 5}
    async with client_for(app) as api:
        before = {e: jobs_submitted(e) for e in ("jobs", "chat")}
        problem = conversation_problem([("user", "What is 7*6?")])
        body = {"problem": problem, "preset": "smoke", "params": knobs, "model": "m"}
        first = await api.post("/v1/jobs", json=body, headers={**H1, "Idempotency-Key": "same-job"})
        assert first.status_code == 202
        replay = await api.post("/v1/jobs", json=body, headers={**H1, "Idempotency-Key": "same-job"})
        assert replay.json()["replayed"] is True and replay.json()["id"] == first.json()["id"]

        chat = asyncio.create_task(
            api.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": messages, "preset": "smoke", **knobs},
                headers=H1,
            )
        )
        chat_job = None
        for _ in range(500):  # the chat request waits for its job: find it, then end it
            chat_job = next(
                (j for j in await redis_store.list_jobs(owner=owner) if j.id != first.json()["id"]), None
            )
            if chat_job is not None:
                break
            await asyncio.sleep(0.01)
        assert chat_job is not None, "the chat request created no job"
        assert (await api.post(f"/v1/jobs/{chat_job.id}/cancel", headers=H1)).status_code == 200
        answered = await chat
        assert answered.status_code == 409 and answered.headers["x-should-retry"] == "false"

        job = await redis_store.get_job(first.json()["id"])
        assert job is not None and chat_job.spec == job.spec  # the same resolved spec from either route
        # Each route counts its new jobs under its own label; the replay made no job and counts none.
        assert jobs_submitted("jobs") - before["jobs"] == 1
        assert jobs_submitted("chat") - before["chat"] == 1


async def test_submission_errors_name_the_field_where_each_route_carries_it(redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store, max_problem_bytes=20)
    async with client_for(app) as api:
        cases = [
            # (job request, chat request fields, where the job route's 422 points, the chat route's);
            # a chat request runs RSA (is not passed through) when it has an RSA field
            (
                {"problem": "x" * 21},
                {"messages": [{"role": "user", "content": "x" * 21}], "preset": "smoke"},
                ["body", "problem"],
                ["body", "messages"],
            ),
            (
                {"problem": "1+1?", "params": {"prompts": "no-such-set"}},
                {"messages": [{"role": "user", "content": "1+1?"}], "prompts": "no-such-set"},
                ["body", "params", "prompts"],
                ["body", "prompts"],
            ),
            (
                {"problem": "1+1?", "preset": "no-such-preset"},
                {"messages": [{"role": "user", "content": "1+1?"}], "preset": "no-such-preset"},
                ["body", "preset"],
                ["body", "preset"],
            ),
        ]
        for job_body_, chat_fields, job_loc, chat_loc in cases:
            r = await api.post("/v1/jobs", json=job_body_, headers=H1)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == job_loc, r.text
            r = await api.post("/v1/chat/completions", json={"model": "m", **chat_fields}, headers=H1)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == chat_loc, r.text
        assert await redis_store.list_jobs(owner=owner_of(KEY1)) == []


async def test_a_chat_request_refused_a_stream_slot_creates_no_job(redis_store: RedisStore) -> None:
    app, _ = make_app(redis_store, max_streams_per_key=0)
    async with client_for(app) as api:
        before = jobs_submitted("chat")
        r = await api.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "1+1?"}], "preset": "smoke"},
            headers=H1,
        )
        assert r.status_code == 429 and "MRSA_API_MAX_STREAMS_PER_KEY" in r.json()["message"]
        # The slot is taken between validating and submitting: a refused slot leaves nothing behind.
        assert await redis_store.list_jobs(owner=owner_of(KEY1)) == []
        assert jobs_submitted("chat") == before
