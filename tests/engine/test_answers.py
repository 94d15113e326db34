"""Answer extraction, equivalence clustering, votes and majority selection."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrsa.domain import Candidate, FinishReason, Vote
from mrsa.engine.answers import extract_answer, fallback_answer, last_boxed, normalise_answer
from mrsa.engine.equivalence import cluster, equivalent
from mrsa.engine.selection import majority, tally

# -- last_boxed -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\fbox{3}", "3"),
        (r"\boxed {  7 }", "7"),  # spaces before the brace and inside are tolerated
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box wins
        (r"\fbox{1} and \boxed{2} and \fbox{3}", "3"),
        (r"\boxed{1} then an empty \boxed{}", "1"),  # an empty box does not hide an earlier answer
        (r"\boxed{1} then \boxed{2", "1"),  # unbalanced last box is skipped
        (r"\boxed{}", None),
        (r"\boxed{   }", None),
        (r"\boxed{2", None),
        (r"\boxed 5", None),
        ("no box at all: 42", None),
        ("", None),
        (r"\boxed{\text{yes}}", r"\text{yes}"),
        # escaped braces are content, not structure
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),
        (r"\boxed{a \} b}", r"a \} b"),
        (r"\boxed{\{1, 2}", r"\{1, 2"),
        (r"\boxed{x \\ {y}}", r"x \\ {y}"),  # \\ is a line break: the brace after it is structural
        (r"\boxed{1} then \boxed{\}", "1"),  # \} does not close the last box
    ],
)
def test_last_boxed(text: str, answer: str | None) -> None:
    assert last_boxed(text) == answer


def _odd_trailing_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


@given(
    inner=st.text(alphabet="abc12+-^_ \\", min_size=1, max_size=20).filter(
        lambda s: s.strip() and not _odd_trailing_backslashes(s)  # else its closing brace is escaped
    )
)
def test_last_boxed_returns_balanced_content(inner: str) -> None:
    for wrapped in (inner, "{" + inner + "}", "x^{" + inner + "}"):
        assert last_boxed(f"blah \\boxed{{{wrapped}}} tail") == wrapped.strip()


@given(text=st.text(max_size=80))
def test_last_boxed_never_crashes_and_is_a_substring(text: str) -> None:
    found = last_boxed(text)
    assert found is None or (found in text and found == found.strip() and found)


def _last_boxed_reference(text: str) -> str | None:
    """The obvious quadratic definition: from each box (last first), walk to its closing brace."""
    import re

    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, pos = 1, match.end()
        while pos < len(text):
            ch = text[pos]
            if ch == "\\" and pos + 1 < len(text) and text[pos + 1] in "\\{}":
                pos += 2
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0:
                inner = text[match.end() : pos].strip()
                if inner:
                    return inner
                break
            pos += 1
    return None


_PIECES = st.sampled_from(["\\boxed{", "\\fbox {", "{", "}", "\\{", "\\}", "\\\\", "\\", "x", "1", " "])


@given(pieces=st.lists(_PIECES, max_size=40))
def test_last_boxed_agrees_with_the_quadratic_definition(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert last_boxed(text) == _last_boxed_reference(text)


# -- hostile model output: extraction is linear -----------------------------------------------------

HOSTILE_SIZE = 200_000
EXTRACT_BOUND_S = 1.0  # generous: 200 KB takes a few milliseconds when linear, minutes when quadratic


def _extraction_time(text: str) -> float:
    started = time.perf_counter()
    extract_answer(text, text, finished=True)
    extract_answer(text, text, finished=False)
    return time.perf_counter() - started


def _fill(chunk: str, size: int = HOSTILE_SIZE) -> str:
    return (chunk * (size // max(len(chunk), 1) + 1))[:size]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "chunk",
    [
        "\\boxed{",  # thousands of unclosed boxes (84 KB of these froze a worker 70 s)
        "\\boxed{{",
        "\\fbox {x",
        "\\boxed{\\{",
        "{",
        "\\boxed{}",
        "answer is ",
        "1,",
    ],
)
def test_extraction_is_linear_on_hostile_text(chunk: str) -> None:
    assert _extraction_time(_fill(chunk)) < EXTRACT_BOUND_S


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None)
@given(pieces=st.lists(_PIECES, min_size=1, max_size=8))
def test_extraction_stays_linear_on_any_repeated_pattern(pieces: list[str]) -> None:
    assert _extraction_time(_fill("".join(pieces))) < EXTRACT_BOUND_S


def test_a_huge_boxed_sum_is_extracted_whole_and_fast() -> None:
    total = "+".join(["1"] * (HOSTILE_SIZE // 2))
    started = time.perf_counter()
    assert last_boxed(f"so \\boxed{{{total}}}") == total
    assert time.perf_counter() - started < EXTRACT_BOUND_S


# -- fallback_answer / extract_answer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is 42.", "42"),
        ("so the answer: 1,234", "1234"),
        ("Answer = -7", "-7"),
        ("the answer is 3/4", "3/4"),
        ("The answer is $-5$", "-5"),
        ("the answer is 1 ... no wait, the answer is 2", "2"),  # the last "answer is"
        ("first 1\nthen 2 and 3\n\n", "3"),  # else the last number of the last non-empty line
        ("so x = 3.5.\n", "3.5"),
        ("12 apples\nno numbers here", None),
        ("", None),
    ],
)
def test_fallback_answer(text: str, answer: str | None) -> None:
    assert fallback_answer(text) == answer


def test_extract_answer_prefers_the_answer_part_then_the_trace() -> None:
    trace = "reasoning \\boxed{1}</think>final \\boxed{2}"
    assert extract_answer("final \\boxed{2}", trace, finished=True) == "2"
    # A box only in the reasoning still counts.
    assert extract_answer("final words", "thinking \\boxed{9}</think>final words", finished=True) == "9"


def test_extract_answer_finished_vs_truncated() -> None:
    # Without a box, only a finished candidate falls back to "answer is" / last number.
    assert extract_answer("so the answer is 17", "so the answer is 17", finished=True) == "17"
    assert extract_answer("so the answer is 17", "so the answer is 17", finished=False) is None
    assert extract_answer("", "", finished=True) is None
    # A box counts either way.
    assert extract_answer("cut \\boxed{5} and then", "cut \\boxed{5} and then", finished=False) == "5"


def test_normalise_answer() -> None:
    assert normalise_answer(" \\text{ A } ") == "A"
    assert normalise_answer("\\dfrac{1}{2}.") == "\\frac{1}{2}"
    assert normalise_answer("$5$") == "5"
    assert normalise_answer("\\left( 1, 2 \\right)") == "(1,2)"


# -- equivalence and clustering ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\frac{1}{2}", "1/2"),
        ("0.5", "1/2"),
        ("42", "42.0"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("x+1", "1+x"),
        ("\\text{A}", "A"),
    ],
)
def test_equivalent(a: str, b: str) -> None:
    assert equivalent(a, b)
    assert equivalent(b, a)


@pytest.mark.parametrize(
    ("a", "b"), [("42", "43"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("(1,2)", "(2,1)"), ("x", "2")]
)
def test_not_equivalent(a: str, b: str) -> None:
    assert not equivalent(a, b)


def test_unparseable_answers_compare_by_text_only() -> None:
    assert equivalent("\\frac{", "\\frac{")
    assert not equivalent("\\frac{", "}}")


def test_cluster_groups_equivalent_answers_in_first_seen_order() -> None:
    answers = ["\\frac{1}{2}", "42", "0.5", "7", "1/2", "42.0", " 7 "]
    assert cluster(answers) == [[0, 2, 4], [1, 5], [3, 6]]
    assert cluster([]) == []
    assert cluster(["3", "4", "5"]) == [[0], [1], [2]]


# -- tally / majority -------------------------------------------------------------------------------


def cand(index: int, answer: str | None, finish: FinishReason = "stop") -> Candidate:
    return Candidate(round=0, index=index, answer=answer, finish_reason=finish)


def test_tally_counts_equivalent_answers_together() -> None:
    votes = tally(
        [cand(0, "0.5"), cand(1, "\\frac{1}{2}", "length"), cand(2, "3"), cand(3, "1/2"), cand(4, None)]
    )
    assert votes == [Vote(answer="0.5", count=3, finished=2), Vote(answer="3", count=1, finished=1)]
    assert majority(votes) == "0.5"


def test_candidates_without_answers_do_not_vote() -> None:
    assert tally([cand(0, None), cand(1, None, "length")]) == []
    assert majority([]) is None


def test_majority_prefers_finished_candidates() -> None:
    # Three truncated candidates say 5, two finished ones say 7: only finished votes count.
    candidates = [cand(i, "5", "length") for i in range(3)] + [cand(3, "7"), cand(4, "7.0")]
    votes = tally(candidates)
    assert votes[0] == Vote(answer="5", count=3, finished=0)
    assert votes[1] == Vote(answer="7", count=2, finished=2)
    assert majority(votes) == "7"


def test_majority_among_only_truncated_candidates_uses_all_votes() -> None:
    candidates = [cand(0, "1", "length"), cand(1, "2", "length"), cand(2, "2", "length")]
    assert majority(tally(candidates)) == "2"


def test_ties_are_broken_deterministically() -> None:
    # Equal counts: more finished votes first, then the first answer seen.
    a = tally([cand(0, "1", "length"), cand(1, "2"), cand(2, "1"), cand(3, "2")])
    assert [v.answer for v in a] == ["2", "1"]
    b = tally([cand(0, "9"), cand(1, "8"), cand(2, "8"), cand(3, "9")])
    assert [v.answer for v in b] == ["9", "8"]
    assert majority(b) == "9"
    # A larger class of mostly truncated votes is listed first but loses to more finished votes.
    c = tally([cand(0, "3", "length"), cand(1, "4"), cand(2, "3"), cand(3, "3", "length"), cand(4, "4")])
    assert [(v.answer, v.count, v.finished) for v in c] == [("3", 3, 1), ("4", 2, 2)]
    assert majority(c) == "4"
    d = tally([cand(0, "3"), cand(1, "4"), cand(2, "3", "length"), cand(3, "4")])
    assert majority(d) == "4"  # 4 has more finished votes (2 vs 1)
    assert majority(tally([cand(1, "4"), cand(0, "3")])) == "4"  # first seen


@given(
    answers=st.lists(
        st.tuples(st.sampled_from(["1", "2", "3", "0.5", "1/2", None]), st.sampled_from(["stop", "length"])),
        max_size=12,
    )
)
def test_tally_is_deterministic_and_complete(answers: list[tuple[str | None, FinishReason]]) -> None:
    candidates = [cand(i, a, f) for i, (a, f) in enumerate(answers)]
    votes = tally(candidates)
    assert votes == tally(candidates)
    assert sum(v.count for v in votes) == sum(1 for a, _ in answers if a is not None)
    assert sum(v.finished for v in votes) == sum(1 for a, f in answers if a is not None and f == "stop")
    counts = [(v.count, v.finished) for v in votes]
    assert counts == sorted(counts, key=lambda c: (-c[0], -c[1]))
    winner = majority(votes)
    if any(v.finished for v in votes):
        assert winner == max(votes, key=lambda v: v.finished).answer
        assert all(v.finished <= next(w for w in votes if w.answer == winner).finished for v in votes)
    elif votes:
        assert winner == votes[0].answer
    else:
        assert winner is None
