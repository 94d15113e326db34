"""Tails: the last τ model tokens of a candidate, cut token-exactly.

The tail is cut from token ids: the ids the server returned for the generation when it returns
them (vLLM ``return_token_ids``), else the backend tokenizer's ids of the text. It is never a
count of whitespace words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mrsa.backends.base import THINK_CLOSE
from mrsa.params import TailSource


class Tokenizer(Protocol):
    async def tokenize(self, text: str) -> list[int]: ...

    async def detokenize(self, ids: list[int]) -> str: ...


def cut_tail(ids: list[int], tail: int) -> list[int]:
    """The last ``tail`` ids (all of them when there are fewer)."""
    if tail <= 0:
        return []
    return ids[-tail:]


def continuation_windows(ids: Sequence[int], head: int, carryover: int) -> tuple[list[int], list[int]]:
    """What a Delethink continuation keeps of a candidate's ``ids`` so far: the first ``head`` and
    the last ``carryover`` of them, each token once. Returns (head ids, carry-over ids); when the
    two windows meet or overlap, the carry-over is everything after the head (so the two together
    are all of ``ids``). With ``head`` 0 the carry-over is :func:`cut_tail` ``(ids, carryover)``."""
    first = list(ids[: max(head, 0)])
    start = max(len(first), len(ids) - max(carryover, 0))
    return first, list(ids[start:])


def split_trace(trace: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a raw trace; reasoning is ``None`` when there is no ``</think>``."""
    head, sep, after = trace.rpartition(THINK_CLOSE)
    if not sep:
        return None, trace
    return head.removeprefix("<think>").lstrip("\n"), after


@dataclass(frozen=True)
class TailSourceText:
    """The text a tail is cut from, and whether the generation's own ids cover it exactly."""

    text: str
    whole_trace: bool


def tail_source_text(trace: str, finished: bool, source: TailSource) -> TailSourceText:
    """Pick the part of the trace a tail is cut from.

    ``trace``: everything. ``reasoning``: the reasoning part (the whole trace when the model did not
    separate reasoning). ``answer_or_tail``: the post-think answer when the candidate finished and
    wrote one, else the reasoning tail (PaCoRe's hybrid).
    """
    if source == "trace":
        return TailSourceText(trace, True)
    reasoning, answer = split_trace(trace)
    if source == "reasoning":
        return TailSourceText(reasoning, False) if reasoning is not None else TailSourceText(trace, True)
    if finished and answer.strip():
        return TailSourceText(answer, reasoning is None)
    return TailSourceText(reasoning, False) if reasoning is not None else TailSourceText(trace, True)


@dataclass(frozen=True)
class Tail:
    text: str
    tokens: int
    source_tokens: int


async def make_tail(
    tokenizer: Tokenizer,
    source: TailSourceText,
    tail: int,
    generated_ids: list[int] | None = None,
) -> Tail:
    """Cut the tail of ``source``: from ``generated_ids`` when they cover it, else by tokenizing."""
    if source.whole_trace and generated_ids is not None:
        ids = generated_ids
    else:
        ids = await tokenizer.tokenize(source.text) if source.text else []
    kept = cut_tail(ids, tail)
    if len(kept) == len(ids) and not (source.whole_trace and generated_ids is not None):
        text = source.text  # the whole source fits: keep its exact text, no round trip
    else:
        text = await tokenizer.detokenize(kept)
    return Tail(text=text, tokens=len(kept), source_tokens=len(ids))
