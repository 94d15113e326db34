"""One backend contract, run against every real inference server the tests can start.

Each test takes a server by fixture name (``request.getfixturevalue``) and drives it through the
same client mrsa uses (:func:`mrsa.backends.factory.make_backend`): llama-cpp-python's
``llama_cpp.server`` (the embedded model), the bundled Triton (PyTriton's ``tritonserver`` with
the vLLM backend's wire) and the bundled vLLM (upstream's own OpenAI server, its CPU build) — all
serving the same SmolLM2-135M GGUF (dequantised for vLLM). SGLang cannot run on these
machines (its packages need CUDA): its dialect is checked on recorded shapes in
tests/backends/test_backend_wire.py. docs/backends.md has the matrix of what each server does here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from mrsa import telemetry
from mrsa.backends.base import (
    Backend,
    BackendRequestError,
    ContextOverflowError,
)
from mrsa.backends.factory import make_backend
from mrsa.backends.http import HttpOptions
from mrsa.engine.tails import make_tail, tail_source_text
from mrsa.servers.bundled_triton import TritonServer
from tests.plugins.servers import ServerHandle
from tests.plugins.triton_server import start_triton
from tests.support.builders import generation_request

SERVERS = ["embedded_server", "triton_server", "vllm_server"]
TEXT = "Markovian RSA keeps the last τ tokens of each candidate: 12 × 13 = 156, ∑ αβ.\n\n  \\boxed{42}"
# What each server promises about seeds: the same seed and request give the same text.
SEEDED = {"llama-cpp-python": True, "triton": True, "vllm": True}
# Servers that continue an assistant prefill raw (others open a new turn: prompts/v1/continue.txt).
RAW_PREFILL = {"llama-cpp-python": False, "triton": True, "vllm": True}
# Servers that refuse a negative temperature (a request error mrsa must not retry).
REJECTS_NEGATIVE_TEMPERATURE = {"llama-cpp-python": False, "triton": True, "vllm": True}


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> ServerHandle:
    handle: ServerHandle = request.getfixturevalue(request.param)
    return handle


async def client(server: ServerHandle, **options: Any) -> Backend:
    """mrsa's client for ``server``, built the way ``mrsa solve --backend URL --backend-kind K``
    does. Triton is given neither the model nor the context: it must find both."""
    triton = server.kind == "triton"
    return await make_backend(
        server.url,
        server.kind,
        model=None if triton else server.model,
        context_length=None if triton else server.context_length,
        tokenizer=server.tokenizer,
        options=HttpOptions(**{"max_retries": 0, **options}),
    )


@pytest.fixture
async def backend(server: ServerHandle) -> AsyncIterator[Backend]:
    b = await client(server)
    try:
        yield b
    finally:
        await b.aclose()


ask = partial(generation_request, fields={"max_tokens": 64, "temperature": 0.0, "seed": 1})


# -- health, discovery, capacity, metrics -----------------------------------------------------------


async def test_health_and_info(server: ServerHandle, backend: Backend) -> None:
    assert await backend.health()
    info = await backend.info()
    assert info.kind == server.kind
    assert info.model == server.model
    assert info.context_length == server.context_length
    assert info.capacity >= 1
    assert backend.supports_prefill == RAW_PREFILL[server.kind]


async def test_metrics_endpoint(server: ServerHandle) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        if server.metrics_url is None:  # llama-cpp-python's server exports none
            assert (await http.get(f"{server.url}/metrics")).status_code == 404
            return
        reply = await http.get(server.metrics_url)
    assert reply.status_code == 200
    assert "# TYPE" in reply.text
    if server.kind == "triton":
        assert f'nv_inference_request_success{{model="{server.model}"' in reply.text
    if server.kind == "vllm":
        assert f'vllm:num_requests_running{{engine="0",model_name="{server.model}"}}' in reply.text
        assert "vllm:num_requests_waiting{" in reply.text


async def test_concurrent_requests_all_complete(backend: Backend) -> None:
    requests = [ask(f"What is {i} + {i}?", max_tokens=8, seed=i) for i in range(6)]
    results = await asyncio.gather(*(backend.generate(r) for r in requests))
    assert [len(r) for r in results] == [1] * 6
    assert all(r[0].completion_tokens > 0 for r in results)


# -- generation ------------------------------------------------------------------------------------


async def test_stop_finish_with_exact_counts(backend: Backend) -> None:
    [result] = await backend.generate(ask("What is 2+2? Answer with the number only."))
    assert result.finish_reason == "stop"
    assert 0 < result.completion_tokens < 64
    assert result.prompt_tokens > 0
    assert "4" in result.content
    # the generation's own token count is what the tokenizer gives back for its text (±1 for the
    # end-of-turn token, which some servers count and none return as text)
    assert abs(len(await backend.tokenize(result.trace)) - result.completion_tokens) <= 1


async def test_length_finish_on_a_small_budget(backend: Backend) -> None:
    [result] = await backend.generate(
        ask("Write a long story about a robot who learns arithmetic.", max_tokens=8)
    )
    assert result.finish_reason == "length"
    assert result.completion_tokens == 8
    assert len(await backend.tokenize(result.trace)) == 8


async def test_n_choices(server: ServerHandle, backend: Backend) -> None:
    results = await backend.generate(ask("Name a colour.", max_tokens=12, temperature=1.0, seed=11, n=3))
    assert len(results) == 3
    assert all(r.completion_tokens > 0 for r in results)
    assert len({r.content for r in results}) > 1  # distinct seeds: not three copies


async def test_same_seed_same_text(server: ServerHandle, backend: Backend) -> None:
    req = ask("Tell me a fact about the moon.", max_tokens=24, temperature=1.0, seed=1234)
    first = await backend.generate(req)
    await backend.generate(ask("Something else entirely.", max_tokens=8, temperature=1.0, seed=7))
    second = await backend.generate(req)
    if SEEDED[server.kind]:
        assert first[0].content == second[0].content


async def test_assistant_prefill_continues(server: ServerHandle, backend: Backend) -> None:
    prefill = "Let me count: one, two, three,"
    [result] = await backend.generate(ask("Count from one to ten in words.", max_tokens=12, prefill=prefill))
    assert result.completion_tokens > 0
    if RAW_PREFILL[server.kind]:
        # a raw continuation goes on with the list rather than starting an answer afresh
        assert "four" in result.content.lower()


# -- tokens and tails ------------------------------------------------------------------------------


async def test_tokenize_detokenize_round_trip(backend: Backend) -> None:
    ids = await backend.tokenize(TEXT)
    assert ids and all(isinstance(i, int) for i in ids)
    assert len(ids) < len(TEXT)
    assert await backend.detokenize(ids) == TEXT
    assert await backend.tokenize("") == []


@pytest.mark.parametrize("tau", [1, 5, 16, 1000])
async def test_tails_are_exactly_min_tau_length(backend: Backend, tau: int) -> None:
    [result] = await backend.generate(ask("Count from one to twenty in words.", max_tokens=40, seed=3))
    source = tail_source_text(result.trace, result.finish_reason == "stop", "trace")
    tail = await make_tail(backend, source, tau)
    ids = await backend.tokenize(result.trace)
    assert tail.source_tokens == len(ids)
    assert tail.tokens == min(tau, len(ids))
    assert result.trace.endswith(tail.text)


# -- errors: what each server really answers, and how mrsa reads it -------------------------------


async def test_context_overflow_is_a_clear_final_error(server: ServerHandle) -> None:
    b = await client(server, max_retries=3, backoff_s=0.0)
    before = telemetry.BACKEND_RETRIES.labels(server.kind, "context_overflow")._value.get()
    with pytest.raises(ContextOverflowError, match="context window"):
        await b.generate(ask("word " * 9000, max_tokens=16))
    assert telemetry.BACKEND_RETRIES.labels(server.kind, "context_overflow")._value.get() == before
    await b.aclose()


async def test_a_bad_request_is_final_and_quotes_the_server(server: ServerHandle) -> None:
    b = await client(server, max_retries=3, backoff_s=0.0)
    try:
        if not REJECTS_NEGATIVE_TEMPERATURE[server.kind]:
            # llama-cpp-python takes a negative temperature as greedy decoding: no error to read
            [result] = await b.generate(ask("hi", max_tokens=4, temperature=-1.0))
            assert result.completion_tokens > 0
            return
        with pytest.raises(BackendRequestError) as caught:
            await b.generate(ask("hi", max_tokens=4, temperature=-1.0))
        assert type(caught.value) is BackendRequestError
        assert "temperature" in str(caught.value)
        assert "attempts" not in str(caught.value)  # not retried
    finally:
        await b.aclose()


async def test_triton_unknown_model_is_final(triton_server: ServerHandle) -> None:
    b = await make_backend(
        triton_server.url,
        "triton",
        model="no-such-model",
        tokenizer=triton_server.tokenizer,
        options=HttpOptions(max_retries=3, backoff_s=0.0),
    )
    with pytest.raises(BackendRequestError, match=r"HTTP 404.*unknown model"):
        await b.generate(ask("hi", max_tokens=4))
    assert not await b.health()
    await b.aclose()


@pytest.fixture(scope="module")
def busy_triton() -> Iterator[TritonServer]:
    """A second bundled Triton whose model holds one request at a time: it answers "busy"."""
    server = start_triton(max_queued=1)
    try:
        yield server
    finally:
        server.stop()


async def test_triton_busy_is_transient_and_retried(
    busy_triton: TritonServer, triton_server: ServerHandle
) -> None:
    # The raw wire first: beyond its queue bound the model answers HTTP 400 "busy … try again".
    body = {"text_input": "Count to one hundred:", "sampling_parameters": '{"max_tokens": 24}'}
    url = f"{busy_triton.url}/v2/models/{busy_triton.model}/generate"
    async with httpx.AsyncClient(timeout=120) as http:
        replies = await asyncio.gather(*(http.post(url, json=body) for _ in range(6)))
    busy = [r for r in replies if r.status_code != 200]
    assert busy and all(r.status_code == 400 and "try again" in r.json()["error"] for r in busy)
    # mrsa's client reads it as transient: retried with backoff until the server has room.
    b = await make_backend(
        busy_triton.url,
        "triton",
        tokenizer=triton_server.tokenizer,
        options=HttpOptions(max_retries=20, backoff_s=0.2, backoff_cap_s=3.0, concurrency=3),
    )
    before = telemetry.BACKEND_RETRIES.labels("triton", "server")._value.get()
    results = await asyncio.gather(*(b.generate(ask(f"Say {i}.", max_tokens=8, seed=i)) for i in range(4)))
    assert all(r[0].completion_tokens > 0 for r in results)
    assert telemetry.BACKEND_RETRIES.labels("triton", "server")._value.get() > before
    await b.aclose()
