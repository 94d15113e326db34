"""The backend client against a hostile server on a real loopback socket: it stalls, lies, sends
too much, asks for a day's pause or fails for a while. Every reply is a clear backend error or a
result that can be stored, within bounded time — never a hang or an unhandled exception."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from typing import Any

import pytest

from mrsa.backends.base import (
    BackendBusy,
    BackendServerError,
    BackendUnavailable,
    GenerationRequest,
    GenerationResult,
    MalformedReplyError,
    ReplyTooLargeError,
)
from mrsa.backends.factory import make_backend
from mrsa.backends.http import BackendDeadlineExceeded, HttpClient, HttpOptions, backend_base_url
from mrsa.backends.openai import OpenAICompatibleBackend
from tests.fakes import Sleeps
from tests.hostile.server import MODEL, HostileServer, completion, huge, raw, reply, silent_then, trickle
from tests.support.builders import generation_request

GUARD_S = 30.0  # a behaviour that would hang the client fails the test after this long instead


def backend(server: HostileServer, **options: Any) -> OpenAICompatibleBackend:
    opts = HttpOptions(**{"max_retries": 0, "backoff_s": 0.01, "backoff_cap_s": 0.02, **options})
    return OpenAICompatibleBackend(server.url, dialect="vllm", options=opts)


request = partial(generation_request, "2+2?", {"max_tokens": 64})


async def generate(
    b: OpenAICompatibleBackend, req: GenerationRequest | None = None
) -> list[GenerationResult]:
    try:
        return await asyncio.wait_for(b.generate(req or request()), GUARD_S)
    finally:
        await b.aclose()


# -- stalls ----------------------------------------------------------------------------------------


async def test_a_trickled_reply_hits_the_total_deadline(server: HostileServer) -> None:
    """One byte every 0.2 s never trips a 5 s read timeout; the 1 s deadline ends the request."""
    server.play(trickle(0.2))
    started = time.monotonic()
    with pytest.raises(BackendDeadlineExceeded, match=r"no complete reply within the 1s deadline"):
        await generate(backend(server, timeout_s=5.0, deadline_s=1.0))
    assert time.monotonic() - started < 5.0
    assert server.calls == 1


async def test_a_deadline_is_retried_and_then_fails_without_being_an_outage(server: HostileServer) -> None:
    server.play(trickle(0.1))
    with pytest.raises(BackendDeadlineExceeded, match="after 2 attempts") as info:
        await generate(backend(server, timeout_s=5.0, deadline_s=0.5, max_retries=1))
    assert server.calls == 2
    assert info.value.retryable and not info.value.outage  # a trickling server fails the job


def test_the_default_deadline_follows_the_read_timeout() -> None:
    assert HttpOptions().deadline_for(600.0) == 3600.0  # an hour: long ZAYA1 generations
    assert HttpOptions().deadline_for(5.0) == 30.0  # a health check
    assert HttpOptions(deadline_s=7.0).deadline_for(600.0) == 7.0


def test_a_long_generation_gets_room_for_its_budget() -> None:
    """A non-streaming server is silent until a generation is done: a 40,960-token ZAYA1 candidate
    at the 10 tokens/s floor needs 68 minutes, more than the 600 s read timeout."""
    assert HttpOptions().generation_timeouts(40_960) == (4096.0, 4096.0)
    assert HttpOptions().generation_timeouts(64) == (600.0, 3600.0)  # short ones: the configured values
    assert HttpOptions(deadline_s=100.0).generation_timeouts(40_960) == (4096.0, 100.0)  # a hard cap


async def test_a_generation_silent_longer_than_the_read_timeout_but_within_its_budget_succeeds(
    server: HostileServer,
) -> None:
    server.play(silent_then(1.5, reply(completion())))
    # 64 tokens at a floor of 20 tokens/s: 3.2 s of silence allowed, the read timeout says 0.5 s.
    (result,) = await generate(backend(server, timeout_s=0.5, min_tokens_per_s=20.0))
    assert result.content == "\\boxed{4}"


async def test_a_generation_silent_past_its_allowance_times_out(server: HostileServer) -> None:
    server.play(silent_then(10.0, reply(completion())))
    started = time.monotonic()
    # 64 tokens at 640 tokens/s: 0.1 s, so the 0.3 s read timeout is the allowance.
    with pytest.raises(BackendUnavailable, match=r"timed out \(") as info:
        await generate(backend(server, timeout_s=0.3, min_tokens_per_s=640.0))
    assert info.value.outage and time.monotonic() - started < 5.0  # a silent server is an outage


async def test_retry_after_of_a_day_is_capped_by_default(server: HostileServer) -> None:
    server.play(reply({"error": "loading"}, 503, {"Retry-After": "86400"}), reply(completion()))
    sleeps = Sleeps()
    client = HttpClient(server.url, HttpOptions(max_retries=1), sleep=sleeps)
    try:
        data = await asyncio.wait_for(client.request_json("POST", "/v1/chat/completions", {}), GUARD_S)
    finally:
        await client.aclose()
    assert data["choices"]
    assert sleeps.delays == [60.0]  # the documented default cap, not a day


async def test_retry_after_cap_is_an_option_and_is_slept_for_real(server: HostileServer) -> None:
    server.play(reply({"error": "busy"}, 429, {"Retry-After": "86400"}), reply(completion()))
    started = time.monotonic()
    (result,) = await generate(backend(server, max_retries=1, retry_after_cap_s=0.2))
    assert result.content == "\\boxed{4}"
    assert 0.2 <= time.monotonic() - started < GUARD_S


async def test_5xx_then_recovery_succeeds(server: HostileServer) -> None:
    busy = reply({"error": "restarting"}, 503)
    server.play(
        busy, reply({"error": "bad gateway"}, 502), reply({"error": "oops"}, 500), reply(completion())
    )
    (result,) = await generate(backend(server, max_retries=3))
    assert result.content == "\\boxed{4}" and server.calls == 4


@pytest.mark.parametrize(
    ("status", "outage"), [(429, True), (502, True), (503, True), (504, True), (500, False)]
)
async def test_busy_statuses_are_an_outage_other_5xx_are_not(
    server: HostileServer, status: int, outage: bool
) -> None:
    server.play(reply({"error": "nope"}, status))
    with pytest.raises(BackendServerError, match=f"HTTP {status}") as info:
        await generate(backend(server))
    assert info.value.outage is outage and isinstance(info.value, BackendBusy) is outage


# -- lies ------------------------------------------------------------------------------------------

MALFORMED: list[tuple[str, Any, str]] = [
    ("no choices", {"choices": []}, r"choices: List should have at least 1 item"),
    (
        "choices an object",
        {"choices": {"0": completion()["choices"][0]}},
        r"choices: Input should be a valid list",
    ),
    ("choices null", {"choices": None}, r"choices: Input should be a valid list"),
    ("a choice is a string", {"choices": ["4"]}, r"choices\.0: Input should be"),
    ("message a string", {"choices": [{"index": 0, "message": "4"}]}, r"choices\.0\.message"),
    ("content a number", {"choices": [{"message": {"content": 4}}]}, r"choices\.0\.message\.content"),
    ("index negative", {"choices": [{"index": -1, "message": {"content": "4"}}]}, r"choices\.0\.index"),
    (
        "token ids not ids",
        {"choices": [{"message": {"content": "4"}, "token_ids": [1, -2, "x"]}]},
        r"choices\.0\.token_ids\.1",
    ),
    ("negative completion tokens", completion(usage={"completion_tokens": -5}), r"usage\.completion_tokens"),
    ("negative prompt tokens", completion(usage={"prompt_tokens": -1}), r"usage\.prompt_tokens"),
    ("usage a string", completion(usage="lots"), r"usage: Input should be"),
    ("counts not numbers", completion(usage={"completion_tokens": "many"}), r"usage\.completion_tokens"),
    ("two choices for one", {"choices": completion()["choices"] * 2}, r"asked for 1 choice\(s\), got 2"),
]


@pytest.mark.parametrize(
    ("body", "words"), [(b, w) for _, b, w in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
async def test_a_malformed_chat_reply_is_a_clear_retried_backend_error(
    server: HostileServer, body: Any, words: str
) -> None:
    server.play(reply(body))
    with pytest.raises(MalformedReplyError, match=words) as info:
        await generate(backend(server, max_retries=2))
    assert server.url in str(info.value) and "after 3 attempts" in str(info.value)
    assert server.calls == 3  # retried: a garbled reply may be transient
    assert not info.value.outage


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # too deep for the JSON decoder
        (b'{"choices": [{"message": {"content": "cut', "not JSON"),
    ],
    ids=["html", "deep", "truncated"],
)
async def test_a_body_that_is_not_json_is_a_malformed_reply(
    server: HostileServer, body: bytes, words: str
) -> None:
    server.play(raw(body))
    with pytest.raises(MalformedReplyError, match=words):
        await generate(backend(server, max_retries=1))
    assert server.calls == 2


async def test_an_error_inside_a_200_body_is_a_server_error_with_its_message(server: HostileServer) -> None:
    server.play(reply({"object": "error", "message": "engine dead"}))
    with pytest.raises(BackendServerError, match="engine dead"):
        await generate(backend(server))


async def test_a_malformed_reply_then_a_good_one_succeeds(server: HostileServer) -> None:
    server.play(
        reply({"choices": []}), reply(completion(usage={"completion_tokens": -3})), reply(completion())
    )
    (result,) = await generate(backend(server, max_retries=2))
    assert result.content == "\\boxed{4}" and result.completion_tokens == len("\\boxed{4}")


@pytest.mark.parametrize(
    "body", [{"tokens": "abc"}, {"tokens": [1, {"id": -4}]}, {"tokens": [1.5]}, [1, 2], {"count": 3}]
)
async def test_a_garbage_tokenize_reply_is_a_backend_error(server: HostileServer, body: Any) -> None:
    server.tokenize_reply = body
    b = backend(server)
    try:
        with pytest.raises(MalformedReplyError, match="tokenize reply has no list of token ids"):
            await b.tokenize("ab")
    finally:
        await b.aclose()


@pytest.mark.parametrize("body", [{"prompt": 4}, {"text": None}, "text", []])
async def test_a_garbage_detokenize_reply_is_a_backend_error(server: HostileServer, body: Any) -> None:
    server.detokenize_reply = body
    b = backend(server)
    try:
        with pytest.raises(MalformedReplyError, match="detokenize reply has no text"):
            await b.detokenize([97, 98])
    finally:
        await b.aclose()


# -- text that cannot be stored as is --------------------------------------------------------------


def _raw_completion(content_json: bytes) -> bytes:
    """A chat completion whose ``content`` is these exact JSON string bytes (quotes included)."""
    text = json.dumps(completion("PLACEHOLDER")).encode()
    return text.replace(b'"PLACEHOLDER"', content_json)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (rb'"a\ud800b \\boxed{4}"', "a\ufffdb \\boxed{4}"),  # a lone high surrogate escape
        (rb'"\udfffend"', "\ufffdend"),  # a lone low surrogate
        (rb'"\ude00\ud83d"', "\ufffd\ufffd"),  # a pair in the wrong order: two lone ones
        (rb'"ok \ud83d\ude00"', "ok \U0001f600"),  # a real pair stays the emoji
        (b'"raw \xed\xa0\x80 bytes"', None),  # a surrogate encoded as UTF-8 bytes: invalid UTF-8
        (b'"bad \xff\xfe utf-8"', None),
    ],
    ids=["high", "low", "reversed", "pair", "utf8-surrogate", "invalid-utf8"],
)
async def test_lone_surrogates_and_invalid_utf8_become_replacement_characters(
    server: HostileServer, content: bytes, expected: str | None
) -> None:
    server.play(raw(_raw_completion(content)))
    (result,) = await generate(backend(server))
    if expected is not None:
        assert result.content == expected
    else:
        assert "\ufffd" in result.content
    result.model_dump_json()  # storable: a lone surrogate made this raise
    result.content.encode("utf-8")


# -- too much --------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_body_is_a_final_clear_error(server: HostileServer, declared: bool) -> None:
    limit = 1 << 20
    server.play(huge(10 << 30 if declared else 3 * limit, declared=declared))
    started = time.monotonic()
    with pytest.raises(ReplyTooLargeError, match=rf"over the limit of {limit} bytes") as info:
        await generate(backend(server, max_body_bytes=limit, max_retries=2))
    assert server.url in str(info.value)
    assert server.calls == 1  # final: the same request gets the same reply
    assert time.monotonic() - started < 10.0


def test_the_default_body_limit_is_documented_and_generous() -> None:
    assert HttpOptions().max_body_bytes == 64 * 2**20


# -- base URLs and models --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", " /v1 "])
async def test_a_base_url_is_accepted_with_or_without_v1(server: HostileServer, suffix: str) -> None:
    url = f"{server.url}{suffix.strip()}" if suffix != " /v1 " else f" {server.url}/v1 "
    b = await make_backend(url, "auto", options=HttpOptions(max_retries=0))
    try:
        info = await b.info()
        assert b.url == server.url and info.url == server.url
        assert info.kind == "vllm" and info.model == MODEL
        (result,) = await b.generate(request())
        assert result.content == "\\boxed{4}"
    finally:
        await b.aclose()
    assert "/v1/models" in server.paths and "/v1/chat/completions" in server.paths
    assert not any(p.startswith("/v1/v1") for p in server.paths), server.paths


def test_backend_base_url_normalises_one_way() -> None:
    for given in [
        "http://h:8000",
        "http://h:8000/",
        "http://h:8000/v1",
        "http://h:8000/v1/",
        "http://h:8000/V1",
    ]:
        assert backend_base_url(given) == "http://h:8000"
    assert backend_base_url("https://gw.example/llm/v1") == "https://gw.example/llm"
    assert backend_base_url("http://h:8000/v10") == "http://h:8000/v10"
    direct = OpenAICompatibleBackend("http://h:8000/v1/", dialect="vllm")
    assert direct.url == "http://h:8000" and direct.http.base_url == "http://h:8000"


async def test_a_request_naming_a_model_sends_it_and_skips_discovery(server: HostileServer) -> None:
    b = backend(server)
    try:
        await b.generate(request(model="my-lora"))
        assert server.requests[-1]["model"] == "my-lora"
        assert "/v1/models" not in server.paths  # the job said which model: nothing to discover
        await b.generate(request())
        assert server.requests[-1]["model"] == MODEL  # no model named: the server's own
    finally:
        await b.aclose()


async def test_a_body_starting_with_a_utf8_bom_is_read(server: HostileServer) -> None:
    server.play(raw(b"\xef\xbb\xbf" + json.dumps(completion()).encode()))
    (result,) = await generate(backend(server))
    assert result.content == "\\boxed{4}"
