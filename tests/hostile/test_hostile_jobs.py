"""Whole jobs on a hostile server: a lie fails the job with a clear reason (and the worker goes on),
text that cannot be stored as is gets stored safely, and the job's model reaches the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest

from mrsa.backends.http import HttpOptions
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.cli.settings import Settings
from mrsa.domain import JobResult, JobSpec, JobStatus
from mrsa.store.opening import open_store
from tests.hostile.server import MODEL, HostileServer, completion, raw, reply
from tests.plugins.redis_server import RedisServer
from tests.support.builders import job_spec
from workers.inprocess import InProcessRunner
from workers.loop import WorkerOptions

TIMEOUT_S = 60.0


PARAMS = {"population": 2, "subset": 1, "rounds": 1, "budget": 64, "tail": 8, "seed": 3}
spec = partial(job_spec, "What is 2+2?", PARAMS)


def options() -> WorkerOptions:
    return WorkerOptions(block_ms=20, cancel_check_s=0.05, heartbeat_s=0.1, shutdown_grace_s=2.0)


@pytest.fixture
async def hostile_backend(server: HostileServer) -> AsyncIterator[OpenAICompatibleBackend]:
    opts = HttpOptions(max_retries=1, backoff_s=0.01, backoff_cap_s=0.02)
    b = OpenAICompatibleBackend(server.url, dialect="vllm", options=opts)
    try:
        yield b
    finally:
        await b.aclose()


async def solve(runner: InProcessRunner, job: JobSpec) -> JobResult:
    return await asyncio.wait_for(runner.solve(job), TIMEOUT_S)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (completion(usage={"completion_tokens": -5, "prompt_tokens": 3}), "usage.completion_tokens"),
        ({"choices": []}, "choices: List should have at least 1 item"),
        ({"choices": {"0": {}}}, "choices: Input should be a valid list"),
    ],
    ids=["negative-count", "no-choices", "choices-object"],
)
async def test_a_lying_backend_fails_the_job_with_a_clear_reason_and_the_worker_goes_on(
    server: HostileServer, hostile_backend: OpenAICompatibleBackend, body: Any, words: str
) -> None:
    async with InProcessRunner(hostile_backend, capacity=2, options=options()) as runner:
        server.play(reply(body))
        failed = await solve(runner, spec())
        assert failed.status == JobStatus.failed
        assert failed.error is not None and "malformed chat completion reply" in failed.error, failed.error
        assert words in failed.error and server.url in failed.error
        server.play(reply(completion()))
        ok = await solve(runner, spec())  # the worker survived the lie
        assert ok.status == JobStatus.succeeded and ok.answer == "4"


async def test_lone_surrogates_are_stored_as_replacement_characters(
    server: HostileServer, hostile_backend: OpenAICompatibleBackend, redis_server: RedisServer
) -> None:
    body = completion("PLACEHOLDER")
    text = json.dumps(body).encode()
    server.play(raw(text.replace(b'"PLACEHOLDER"', rb'"odd \ud800 text, \\boxed{4} \udc00"')))
    async with open_store(Settings(redis_url=redis_server.url)) as store:
        async with InProcessRunner(hostile_backend, store, capacity=2, options=options()) as runner:
            result = await solve(runner, spec())
        assert result.status == JobStatus.succeeded, result.error
        assert result.answer == "4"
        stored = await store.get_candidates(result.job_id, 0)
        assert stored and all(c.content == "odd \ufffd text, \\boxed{4} \ufffd" for c in stored)


async def test_the_jobs_model_is_sent_to_the_backend(
    server: HostileServer, hostile_backend: OpenAICompatibleBackend
) -> None:
    """vLLM serves named models (aliases, LoRA adapters): a job naming one must reach it."""
    async with InProcessRunner(hostile_backend, capacity=2, options=options()) as runner:
        named = await solve(runner, spec(model="zaya1-lora"))
        asked = {r["model"] for r in server.requests}
        server.requests.clear()
        default = await solve(runner, spec(model=None))
        asked_default = {r["model"] for r in server.requests}
    assert named.status == default.status == JobStatus.succeeded
    assert named.model == "zaya1-lora"
    assert asked == {"zaya1-lora"}  # every request of the job: round 0, aggregation
    assert asked_default == {MODEL}  # no model named: the one the server reports


async def test_the_jobs_model_reaches_the_final_aggregation_too(
    server: HostileServer, hostile_backend: OpenAICompatibleBackend
) -> None:
    async with InProcessRunner(hostile_backend, capacity=2, options=options()) as runner:
        result = await solve(runner, spec(model="zaya1-lora", selection="aggregate", rounds=0))
    assert result.status == JobStatus.succeeded
    assert len(server.requests) == 3 and {r["model"] for r in server.requests} == {"zaya1-lora"}
