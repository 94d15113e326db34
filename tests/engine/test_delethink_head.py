"""The Delethink head: a continuation holds the query, the first ``head`` tokens of the first
chunk and the last ``carryover`` tokens (the Markovian Thinker keeps 100). The pure windowing as
properties, then the continuation prompts a job sends, token by token (more in test_engine's
test_chunked_generation)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mrsa.engine import prompts
from mrsa.engine.generation import continuation_prompt_parts
from mrsa.engine.tails import continuation_windows, cut_tail
from mrsa.params import RSAParams, resolve_params
from tests.engine.test_engine import endless, make_spec, run_job, user_prompt
from tests.fakes import FakeBackend

ids_lists = st.lists(st.integers(0, 50), max_size=60)
sizes = st.integers(0, 80)


@given(ids=ids_lists, head=sizes, carry=sizes)
def test_windows_are_the_head_and_the_carryover_each_token_once(
    ids: list[int], head: int, carry: int
) -> None:
    first, last = continuation_windows(ids, head, carry)
    n = len(ids)
    assert first == ids[: min(head, n)]  # the head: the first tokens, exactly
    assert last == ids[n - len(last) :]  # the carry-over: a suffix
    assert len(first) + len(last) == min(n, head + carry)  # no token twice, none beyond the windows
    if n <= head + carry:
        assert first + last == ids  # the windows meet: everything, in order
    else:
        assert last == ids[-carry:] if carry else last == []


@given(ids=ids_lists, carry=sizes)
def test_without_a_head_the_carryover_is_the_tail_cut(ids: list[int], carry: int) -> None:
    assert continuation_windows(ids, 0, carry) == ([], cut_tail(ids, carry))


def test_the_head_defaults_to_delethinks_and_is_at_most_the_first_chunk() -> None:
    assert RSAParams.model_fields["head"].default == 100
    assert resolve_params("zaya1").head_tokens == 0  # unchunked: no continuations at all
    assert resolve_params("zaya1", {"chunk": 8192}).head_tokens == 100
    assert resolve_params("smoke", {"chunk": 40, "carryover": 8}).head_tokens == 40


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "bb", " ", "\n", "∑", "x=1", "."]), min_size=1, max_size=60),
    head=st.integers(0, 12),
    carry=st.integers(0, 12),
    prefill=st.booleans(),
)
def test_continuation_prompt_parts_token_by_token(
    words: list[str], head: int, carry: int, prefill: bool
) -> None:
    """The text sent is the detokenised kept ids: one window when they are contiguous, the head and
    the carry-over apart (in the continue_head template) when tokens between them were dropped."""
    backend = FakeBackend()
    tok = backend.tokenizer
    own = tok.encode("".join(words))
    params = make_spec(budget=64, tail=4, chunk=16, carryover=carry, head=head).params
    got_prefill, got_prompt = asyncio.run(continuation_prompt_parts(backend, params, "Q", own, prefill))
    first, last = own[: min(head, 16)], own[max(min(head, 16), len(own) - carry) :]
    if prefill:
        assert got_prompt == "Q" and got_prefill == tok.decode(first + last)
        return
    assert got_prefill is None
    if len(first) + len(last) == len(own) or not first:
        assert got_prompt == prompts.continuation_prompt("v1", "Q", tok.decode(first + last))
    else:
        expected = prompts.continuation_prompt("v1", "Q", tok.decode(last), head=tok.decode(first))
        assert got_prompt == expected and "<work_start>" in got_prompt


async def test_a_head_longer_than_the_first_chunk_keeps_that_chunk() -> None:
    """head ≥ chunk: the first chunk whole (it is all the head there is), then the carry-over."""
    backend = FakeBackend(endless, supports_prefill=True)
    spec = make_spec(population=1, subset=1, rounds=0, budget=30, tail=6, chunk=10, carryover=3, head=500)
    result, _, _ = await run_job(backend, spec)
    tok = backend.tokenizer
    calls = sorted(backend.calls, key=lambda c: int(c.request.tag["chunk"]))
    chunk0 = calls[0].results[0].content  # type: ignore[index]
    chunk1 = calls[1].results[0].content  # type: ignore[index]
    assert calls[1].request.prefill == chunk0  # 10 tokens: head and carry-over meet
    so_far = tok.encode(chunk0 + chunk1)
    assert calls[2].request.prefill == tok.decode(so_far[:10] + so_far[-3:])
    assert user_prompt(calls[2].request) == user_prompt(calls[0].request)  # the query, unchanged
    assert result.rounds[0].candidates[0].decode_tokens == 30
