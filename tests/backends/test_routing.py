"""The routing-affinity header: one lineage key per candidate (all its Delethink chunks), distinct
between a job's candidates, sent by every backend in the header a router reads."""

from __future__ import annotations

import asyncio
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mrsa.backends.http import HEADER_NAME_PATTERN, HttpClient, HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.backends.wire import MockWire, WireRequest, WireResponse
from mrsa.cli.settings import Settings
from mrsa.domain import JobSpec, Task
from mrsa.engine.planning import lineage_key
from mrsa.env import describe_settings_error
from mrsa.params import RSAParams
from tests.fakes import FakeBackend
from tests.support.builders import generation_request
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

HEADER = "x-smg-routing-key"
TOKEN = re.compile(HEADER_NAME_PATTERN)  # a header value made of token characters is always safe
CHAT = {
    "choices": [{"index": 0, "message": {"content": "\\boxed{4}"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3},
}


def test_lineage_key_names_one_candidate() -> None:
    key = lineage_key(Task(job_id="0f3a9c", round=2, index=5))
    assert key == "0f3a9c-r2-c5"
    assert lineage_key(Task(job_id="0f3a9c", round=2, index=5, parents=[1, 2])) == key  # parents: same
    assert lineage_key(Task(job_id="0f3a9c", round=2, index=0, kind="select")) == "0f3a9c-r2-select"


@given(
    job=st.text(min_size=1, max_size=200),
    tasks=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 1000)), min_size=2, max_size=20, unique=True),
)
def test_lineage_keys_are_header_tokens_and_distinct_within_a_job(
    job: str, tasks: list[tuple[int, int]]
) -> None:
    keys = [lineage_key(Task(job_id=job, round=r, index=i)) for r, i in tasks]
    assert all(TOKEN.fullmatch(k) for k in keys)  # whatever the job id: never a header injection
    assert len(set(keys)) == len(keys)


async def test_http_client_sends_the_lineage_in_the_configured_header_on_every_retry() -> None:
    seen: list[WireRequest] = []

    def handler(request: WireRequest) -> WireResponse:
        seen.append(request)
        if len(seen) == 1:
            return WireResponse.of_json(503, {"error": "busy"})
        return WireResponse.of_json(200, {"ok": True})

    options = HttpOptions(routing_header="X-SMG-Routing-Key", max_retries=2, api_key="k")

    async def no_sleep(_: float) -> None:
        return None

    client = HttpClient("http://router", options, wire=MockWire(handler), sleep=no_sleep)
    await client.request_json("POST", "/v1/chat/completions", {"a": 1}, lineage="job-r0-c3")
    await client.request_json("GET", "/health")  # no lineage: no header
    assert [r.headers.get(HEADER) for r in seen] == ["job-r0-c3", "job-r0-c3", None]
    assert all(r.headers["authorization"] == "Bearer k" for r in seen)


async def test_no_header_without_a_configured_name() -> None:
    seen: list[WireRequest] = []

    def handler(request: WireRequest) -> WireResponse:
        seen.append(request)
        return WireResponse.of_json(200, CHAT)

    backend = OpenAICompatibleBackend("http://s", dialect="vllm", model="m", wire=MockWire(handler))
    await backend.generate(request(lineage="j-r0-c0"))
    assert set(seen[0].headers) == {"content-type"}


request = partial(generation_request, "2+2?", {"max_tokens": 8})


@pytest.mark.parametrize("dialect", ["vllm", "llamacpp"])
async def test_openai_backend_sends_the_header_on_generations_only(dialect: Any) -> None:
    """Also on each request a dialect without ``n`` fans out; tokenize and detokenize carry none."""
    seen: list[WireRequest] = []

    def handler(request: WireRequest) -> WireResponse:
        seen.append(request)
        if request.path == "/tokenize":
            return WireResponse.of_json(200, {"tokens": [1, 2]})
        return WireResponse.of_json(200, CHAT)

    options = HttpOptions(routing_header=HEADER, max_retries=0)
    backend = OpenAICompatibleBackend(
        "http://s", dialect=dialect, model="m", options=options, wire=MockWire(handler)
    )
    await backend.generate(request(lineage="j-r1-c2", n=2 if dialect == "llamacpp" else 1))
    await backend.tokenize("hi")
    chats = [r for r in seen if r.path == "/v1/chat/completions"]
    assert chats and all(r.headers[HEADER] == "j-r1-c2" for r in chats)
    assert [r.headers.get(HEADER) for r in seen if r.path == "/tokenize"] == [None]
    assert all("lineage" not in (r.json() or {}) for r in seen)  # never in the body


async def test_triton_sends_the_header_on_generate(tmp_path: Path) -> None:
    from tests.backends.test_backend_wire import (
        GENERATE,
        TRITON_META,
        MockServer,
        build_tokenizer,
        generate_reply,
        triton,
    )

    seen: list[WireRequest] = []

    def generate(req: WireRequest) -> WireResponse:
        seen.append(req)
        return WireResponse.of_json(200, generate_reply("\\boxed{4}"))

    template = {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    tok = build_tokenizer(tmp_path / "tok", template)
    server = MockServer({("POST", GENERATE): generate, ("GET", "/v2/models/vllm_model"): TRITON_META})
    backend = triton(server, tok, options=HttpOptions(routing_header=HEADER, max_retries=0))
    await backend.generate(request(lineage="j-r0-c1", n=2))  # Triton fans n out: each carries it
    assert [r.headers.get(HEADER) for r in seen] == ["j-r0-c1", "j-r0-c1"]


def test_settings_carry_the_header_name_to_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRSA_BACKEND_ROUTING_HEADER", "x-session-key")
    assert Settings().http_options().routing_header == "x-session-key"
    monkeypatch.setenv("MRSA_BACKEND_ROUTING_HEADER", "")  # compose passes unset variables as ""
    assert Settings().http_options().routing_header is None
    monkeypatch.setenv("MRSA_BACKEND_ROUTING_HEADER", "x bad: header")
    with pytest.raises(ValidationError) as err:
        Settings()
    assert describe_settings_error(err.value).startswith("MRSA_BACKEND_ROUTING_HEADER: ")


async def test_every_chunk_of_a_candidate_shares_its_key_and_candidates_differ() -> None:
    """A chunked job, end to end on the engine: each candidate's chunks carry one key, the N
    candidates of a round N keys, and a new round new keys."""
    backend = FakeBackend(lambda req: "step " * 40)  # never stops: every candidate runs to β
    params = RSAParams(population=3, subset=2, rounds=1, budget=60, tail=8, chunk=20, carryover=4)
    options = WorkerOptions(block_ms=20, cancel_check_s=0.01, heartbeat_s=0.05, backend_hold_s=0.0)
    async with InProcessRunner(backend, capacity=3, options=options) as runner:
        result = await asyncio.wait_for(runner.solve(JobSpec(problem="1+1?", params=params)), 30)
    by_candidate: dict[tuple[object, object], set[str | None]] = {}
    for r in backend.requests:
        by_candidate.setdefault((r.tag["round"], r.tag["index"]), set()).add(r.lineage)
    assert len(by_candidate) == 6
    assert all(len(keys) == 1 for keys in by_candidate.values())
    assert len({k for keys in by_candidate.values() for k in keys}) == 6
    assert len(backend.requests) == 6 * 3  # three chunks each, so the keys were shared for real
    assert all(result.job_id in (r.lineage or "") for r in backend.requests)
