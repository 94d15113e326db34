"""Tails: token-exact cuts, the text a tail is cut from, and the raw trace."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrsa.backends.base import THINK_CLOSE, GenerationResult
from mrsa.engine.tails import TailSourceText, cut_tail, make_tail, split_trace, tail_source_text
from tests.fakes import FakeTokenizer

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)
# Text a model might write: words, spaces, newlines, maths and a stray </think>.
model_texts = st.lists(
    st.sampled_from(
        ["the", " ", "\n", "answer", "x^2", "+", "\\frac{1}{2}", "42", ".", THINK_CLOSE, "ééé", "  "]
    ),
    max_size=60,
).map("".join)


# -- cut_tail ---------------------------------------------------------------------------------------


@given(ids=st.lists(st.integers(0, 10_000), max_size=100), tail=st.integers(0, 150))
def test_cut_tail_keeps_exactly_the_last_min_tau_len_ids(ids: list[int], tail: int) -> None:
    kept = cut_tail(ids, tail)
    assert len(kept) == min(tail, len(ids))
    assert kept == (ids[len(ids) - len(kept) :] if kept else [])


def test_cut_tail_zero_and_negative_give_nothing() -> None:
    assert cut_tail([1, 2, 3], 0) == []
    assert cut_tail([1, 2, 3], -1) == []
    assert cut_tail([], 5) == []


# -- make_tail --------------------------------------------------------------------------------------


@given(text=model_texts, tail=st.integers(1, 80))
async def test_make_tail_is_token_exact(text: str, tail: int) -> None:
    tok = FakeTokenizer()
    ids = tok.encode(text)
    result = await make_tail(tok, TailSourceText(text, True), tail)
    assert result.tokens == min(tail, len(ids))
    assert result.source_tokens == len(ids)
    assert result.text == tok.decode(ids[-tail:] if ids else [])
    assert text.endswith(result.text)
    if len(ids) <= tail:
        assert result.text == text  # a source that fits is carried whole, byte for byte


@given(text=texts, tail=st.integers(1, 300))
async def test_make_tail_any_unicode(text: str, tail: int) -> None:
    tok = FakeTokenizer()
    result = await make_tail(tok, TailSourceText(text, False), tail)
    ids = tok.encode(text)
    assert result.tokens == min(tail, len(ids))
    assert tok.encode(result.text) == cut_tail(ids, tail)


async def test_make_tail_counts_tokens_not_words_or_characters() -> None:
    tok = FakeTokenizer()
    text = "alpha beta\n\ngamma, delta: 12345678 = x"
    ids = tok.encode(text)
    assert len(ids) not in (len(text), len(text.split()))
    result = await make_tail(tok, TailSourceText(text, True), 5)
    assert result.tokens == 5
    assert result.text == tok.decode(ids[-5:])
    assert result.text == "5678 = x"


@given(text=model_texts.filter(bool), tail=st.integers(1, 80))
async def test_make_tail_uses_the_generated_ids_when_they_cover_the_trace(text: str, tail: int) -> None:
    tok = FakeTokenizer()
    # The server's own segmentation of the same text: one id per character (differs from the
    # tokenizer's), so the result shows which ids were used.
    generated = [i for ch in text for i in tok.encode(ch)]
    before = tok.tokenize_calls
    result = await make_tail(tok, TailSourceText(text, True), tail, generated)
    assert tok.tokenize_calls == before  # no round trip through the tokenizer
    assert result.source_tokens == len(generated)
    assert result.tokens == min(tail, len(generated))
    assert result.text == text[-tail:]


async def test_make_tail_tokenizes_a_partial_source_even_with_generated_ids() -> None:
    """Generated ids cover the whole trace; a reasoning-only source must be tokenized itself."""
    tok = FakeTokenizer()
    trace = f"thinking hard{THINK_CLOSE} answer 7"
    source = tail_source_text(trace, True, "reasoning")
    assert source == TailSourceText("thinking hard", False)
    result = await make_tail(tok, source, 2, generated_ids=tok.encode(trace))
    assert result.source_tokens == len(tok.encode("thinking hard"))
    assert result.text == " hard"


async def test_make_tail_of_empty_source() -> None:
    tok = FakeTokenizer()
    result = await make_tail(tok, TailSourceText("", True), 10)
    assert (result.text, result.tokens, result.source_tokens) == ("", 0, 0)
    assert tok.tokenize_calls == 0


# -- split_trace / tail_source_text -----------------------------------------------------------------


def test_split_trace() -> None:
    assert split_trace("plain answer") == (None, "plain answer")
    assert split_trace(f"<think>\nreason{THINK_CLOSE}\nanswer") == ("reason", "\nanswer")
    assert split_trace(f"reason{THINK_CLOSE}answer") == ("reason", "answer")
    assert split_trace(f"reason{THINK_CLOSE}") == ("reason", "")
    # The last </think> closes the reasoning (a model may quote the tag while thinking).
    assert split_trace(f"a{THINK_CLOSE}b{THINK_CLOSE}c") == (f"a{THINK_CLOSE}b", "c")


@given(reasoning=model_texts.filter(lambda s: THINK_CLOSE not in s), answer=model_texts)
def test_split_trace_round_trips_the_answer(reasoning: str, answer: str) -> None:
    r, a = split_trace(f"{reasoning}{THINK_CLOSE}{answer}")
    if THINK_CLOSE not in answer:
        assert a == answer
        assert r == reasoning.lstrip("\n")


TRACE = f"I think 6*7{THINK_CLOSE}The answer is \\boxed{{42}}"
OPEN = "I think 6*7 and then more thinking that ran out of"


@pytest.mark.parametrize("finished", [True, False])
def test_source_trace_is_everything(finished: bool) -> None:
    assert tail_source_text(TRACE, finished, "trace") == TailSourceText(TRACE, True)
    assert tail_source_text(OPEN, finished, "trace") == TailSourceText(OPEN, True)


@pytest.mark.parametrize("finished", [True, False])
def test_source_reasoning(finished: bool) -> None:
    assert tail_source_text(TRACE, finished, "reasoning") == TailSourceText("I think 6*7", False)
    # No </think>: the model did not separate its reasoning, the whole trace is the source.
    assert tail_source_text(OPEN, finished, "reasoning") == TailSourceText(OPEN, True)


def test_source_answer_or_tail() -> None:
    # Finished with an answer after </think>: the answer.
    assert tail_source_text(TRACE, True, "answer_or_tail") == TailSourceText(
        "The answer is \\boxed{42}", False
    )
    # Truncated: the reasoning tail, even though something followed </think>.
    assert tail_source_text(TRACE, False, "answer_or_tail") == TailSourceText("I think 6*7", False)
    # Finished but nothing after </think>: the reasoning.
    closed = f"I think 6*7{THINK_CLOSE}  \n"
    assert tail_source_text(closed, True, "answer_or_tail") == TailSourceText("I think 6*7", False)
    # No reasoning split at all: the whole trace, either way (and the generated ids cover it).
    assert tail_source_text(OPEN, False, "answer_or_tail") == TailSourceText(OPEN, True)
    assert tail_source_text("just \\boxed{1}", True, "answer_or_tail") == TailSourceText(
        "just \\boxed{1}", True
    )


# -- GenerationResult.trace -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reasoning", "content", "finish", "trace"),
    [
        ("think", "answer", "stop", f"think{THINK_CLOSE}answer"),
        ("think", "answer", "length", f"think{THINK_CLOSE}answer"),  # closed: it wrote an answer
        ("think", "", "stop", f"think{THINK_CLOSE}"),  # stopped: reasoning was closed
        ("think", "", "length", "think"),  # cut while thinking: no </think>
        (None, "answer", "stop", "answer"),
        ("", "answer", "stop", "answer"),
        (None, "", "length", ""),
    ],
)
def test_generation_result_trace(reasoning: str | None, content: str, finish: str, trace: str) -> None:
    result = GenerationResult.model_validate(
        {"content": content, "reasoning": reasoning, "finish_reason": finish}
    )
    assert result.trace == trace


@given(reasoning=model_texts.filter(lambda s: bool(s) and THINK_CLOSE not in s), content=model_texts)
def test_trace_then_split_gives_back_the_parts(reasoning: str, content: str) -> None:
    result = GenerationResult(content=content, reasoning=reasoning, finish_reason="stop")
    r, a = split_trace(result.trace)
    if THINK_CLOSE not in content:
        assert (r, a) == (reasoning.lstrip("\n"), content)
