"""The OpenAI-compatible client against a real llama_cpp.server serving the embedded model."""

from __future__ import annotations

import pytest

from mrsa.backends.base import ContextOverflowError, GenerationRequest, Message
from mrsa.backends.openai import OpenAICompatibleBackend
from mrsa.engine.tails import make_tail, tail_source_text

pytestmark = pytest.mark.embedded

TEXT = "Markovian RSA keeps the last τ tokens of each candidate: 12 × 13 = 156, ∑ αβ."


async def test_tokenize_detokenize_round_trip(embedded_backend: OpenAICompatibleBackend) -> None:
    ids = await embedded_backend.tokenize(TEXT)
    assert ids and all(isinstance(i, int) for i in ids)
    assert len(ids) < len(TEXT)  # sub-word tokens, not characters
    assert await embedded_backend.detokenize(ids) == TEXT
    assert await embedded_backend.tokenize("") == []


async def test_info_reports_capacity_and_context(embedded_backend: OpenAICompatibleBackend) -> None:
    info = await embedded_backend.info()
    assert info.kind == "llama-cpp-python"
    assert info.capacity == 1
    assert info.context_length == 8192
    assert info.model == "smollm2-135m-instruct"
    assert await embedded_backend.health()


async def test_small_budget_finishes_with_length(embedded_backend: OpenAICompatibleBackend) -> None:
    req = GenerationRequest(
        messages=[Message(role="user", content="Write a long story about a robot who learns arithmetic.")],
        max_tokens=8,
        temperature=0.0,
        seed=1,
    )
    [result] = await embedded_backend.generate(req)
    assert result.finish_reason == "length"
    assert result.completion_tokens == 8
    assert result.prompt_tokens > 0
    assert len(await embedded_backend.tokenize(result.content)) == 8


async def test_stop_finish_and_fan_out(embedded_backend: OpenAICompatibleBackend) -> None:
    req = GenerationRequest(
        messages=[Message(role="user", content="Reply with just the word: yes")],
        max_tokens=64,
        temperature=0.7,
        seed=5,
        n=2,
    )
    results = await embedded_backend.generate(req)
    assert len(results) == 2  # llama-cpp-python has no `n`: two requests were fanned out
    assert all(r.completion_tokens > 0 for r in results)
    assert any(r.finish_reason == "stop" for r in results)


@pytest.mark.parametrize("tau", [1, 5, 16, 1000])
async def test_tails_are_exactly_min_tau_length(embedded_backend: OpenAICompatibleBackend, tau: int) -> None:
    req = GenerationRequest(
        messages=[Message(role="user", content="Count from one to twenty in words.")],
        max_tokens=40,
        temperature=0.0,
        seed=3,
    )
    [result] = await embedded_backend.generate(req)
    source = tail_source_text(result.trace, result.finish_reason == "stop", "trace")
    tail = await make_tail(embedded_backend, source, tau)
    ids = await embedded_backend.tokenize(result.trace)
    assert tail.source_tokens == len(ids)
    assert tail.tokens == min(tau, len(ids))
    assert await embedded_backend.tokenize(tail.text) == ids[
        -tau:
    ] or tail.text == await embedded_backend.detokenize(ids[-tau:])
    assert result.trace.endswith(tail.text)


async def test_context_overflow_is_a_clear_final_error(embedded_backend: OpenAICompatibleBackend) -> None:
    req = GenerationRequest(
        messages=[Message(role="user", content="word " * 9000)],
        max_tokens=16,
        temperature=0.0,
    )
    with pytest.raises(ContextOverflowError, match="context window"):
        await embedded_backend.generate(req)
