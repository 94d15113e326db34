"""Symbolic grading: a table of HMMT-style answer pairs, strict \\boxed{} extraction, the per-answer
time limit (a runaway answer is killed and the pool recycled), and ``mrsa grade``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from evals.grading import Grader, boxed_answer, grade_answer
from evals.records import CandidateRecord
from evals.scoring import round_outcome
from evals.voting import majority_choice
from mrsa.engine.equivalence import cluster, equivalent

SET10 = r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"
HUGE = r"2^{25} \cdot 26!"

# (gold, prediction, equivalent?) — drawn from HMMT February 2025 answer shapes.
PAIRS: list[tuple[str, str, bool]] = [
    # fractions
    (r"\frac{1}{576}", r"\dfrac{1}{576}", True),
    (r"\frac{1}{576}", "1/576", True),
    (r"\frac{1311}{2017}", r"\tfrac{1311}{2017}", True),
    (r"\frac{7}{18}", r"\frac{14}{36}", True),
    (r"\frac{4}{9}", r"\dfrac49", True),
    (r"\frac{2025}{101}", "2025/101", True),
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac{448}{3}", "149.333333333333", True),  # agrees to 10 decimal places
    (r"\frac{1}{576}", "0.001736", False),  # a 4-digit decimal is not the exact answer
    (r"\frac{7}{18}", r"\frac{18}{7}", False),
    (r"\frac{2025}{101}", r"\frac{2025}{100}", False),
    # radicals
    (r"\frac{9 \sqrt{23}}{23}", r"\frac{9}{\sqrt{23}}", True),
    (r"\sqrt{\frac{95}{24}}", r"\frac{\sqrt{570}}{12}", True),
    (r"8\sqrt{10}", r"\sqrt{640}", True),
    (r"\sqrt{23}-2 \sqrt{3}", r"-2\sqrt{3}+\sqrt{23}", True),
    (r"\sqrt{23}-2 \sqrt{3}", r"\sqrt{23}-\sqrt{12}", True),
    (r"9\sqrt{15}", r"\sqrt{1215}", True),
    (r"14+4\sqrt{37}", r"2(7+2\sqrt{37})", True),
    (r"\sqrt{6}", "6^{1/2}", True),
    (r"8\sqrt{10}", r"8\sqrt{11}", False),
    (r"\sqrt{23}-2 \sqrt{3}", r"\sqrt{23}+2\sqrt{3}", False),
    (r"\sqrt{\frac{95}{24}}", r"\frac{95}{24}", False),
    (r"\frac{9 \sqrt{23}}{23}", r"9\sqrt{23}", False),
    (r"\sqrt{6}", "6", False),
    # π
    (r"1-\frac{2}{\pi}", r"\frac{\pi-2}{\pi}", True),
    (r"1-\frac{2}{\pi}", r"1 - 2/\pi", True),
    (r"1-\frac{2}{\pi}", r"1-\frac{\pi}{2}", False),
    (r"1-\frac{2}{\pi}", "0.3634", False),
    (r"\pi", "3.14", False),
    # huge products
    (HUGE, r"2^{25}\times 26!", True),
    (HUGE, r"26! \cdot 2^{25}", True),
    (HUGE, str(2**25 * math.factorial(26)), True),
    (HUGE, r"2^{26} \cdot 26!", False),
    (HUGE, r"2^{25} \cdot 25!", False),
    (HUGE, "26!", False),
    # negative integers and integer formats
    ("-984", "-984", True),
    ("-984", "−984", True),  # Unicode minus sign
    ("-984", "-(984)", True),
    ("-984", "984", False),
    ("3375", r"3\,375", True),  # thin-space thousands separator
    ("2304", "2{,}304", True),
    ("1037", "1,037", True),
    ("3375", "3375.0", True),
    ("3375", "3376", False),
    ("70", "700", False),
    # comma-separated sets: order-free, and every member counts
    (SET10, r"\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}", True),
    (SET10, r"\left\{\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}\right\}", True),
    (SET10, r"\frac{-1\pm\sqrt{17}}{2}", True),
    (SET10, r"\frac{-1+\sqrt{17}}{2}", False),
    (SET10, r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}, 0", False),
    ("1, 2, 3", "3, 2, 1", True),
    ("1, 2, 3", "1, 2", False),
    # tuples: ordered
    ("(3, 1)", "(3,1)", True),
    ("(3, 1)", "(1, 3)", False),
    ("(1, 2)", r"\left(1, 2\right)", True),
    ("(1, 2)", "(2, 1)", False),
    # units and text wrappers
    ("5", r"5\text{ cm}", True),
    ("5", r"5\,\mathrm{cm}", True),
    ("70", r"\text{70}", True),
    ("70", r"70^\circ", True),
    ("70", "x = 70", True),
    ("70", r"\text{seventy-one}", False),
]


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    with Grader(workers=2, timeout_s=30.0) as g:
        yield g


def test_table_is_big_enough_and_balanced() -> None:
    assert len(PAIRS) >= 40
    assert sum(1 for *_, eq in PAIRS if eq) >= 15 and sum(1 for *_, eq in PAIRS if not eq) >= 15


def test_answer_pairs_are_graded_as_expected(grader: Grader) -> None:
    grades = grader.grade_many([(gold, pred) for gold, pred, _ in PAIRS])
    wrong = [
        (gold, pred, expected, g.reason)
        for (gold, pred, expected), g in zip(PAIRS, grades, strict=True)
        if g.correct != expected
    ]
    assert wrong == []
    for (_, _, expected), g in zip(PAIRS, grades, strict=True):
        assert g.reason == ("correct" if expected else "wrong")


def test_in_process_grading_agrees_with_the_pool(grader: Grader) -> None:
    sample = PAIRS[::7]
    pooled = grader.grade_many([(g, p) for g, p, _ in sample])
    assert [grade_answer(g, p).correct for g, p, _ in sample] == [x.correct for x in pooled]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{70}.", "70"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        ("The answer is 70.", None),  # no fallback extraction for grading
        (r"\boxed{}", None),
    ],
)
def test_strict_boxed_extraction(text: str, expected: str | None) -> None:
    assert boxed_answer(text) == expected


def test_reasons() -> None:
    assert grade_answer("70", boxed_answer("The answer is 70.")).reason == "no_boxed"
    assert grade_answer("70", boxed_answer(r"\boxed{70}")).reason == "correct"
    assert grade_answer("70", boxed_answer(r"\boxed{71}")).reason == "wrong"
    assert grade_answer("70", boxed_answer(r"\boxed{\sqrt}")).reason == "parse_error"
    assert (
        grade_answer("70", boxed_answer(r"\boxed{\frac{}")).reason == "no_boxed"
    )  # unbalanced: no box at all
    assert grade_answer("70", "???").reason == "parse_error"
    assert grade_answer("70", None).reason == "no_boxed"
    # the answer part of a candidate wins over its reasoning
    assert boxed_answer(r"\boxed{3}", r"thinking \boxed{2}</think>\boxed{3}") == "3"
    assert boxed_answer("no box", r"thinking \boxed{2}") == "2"


def test_a_runaway_answer_times_out_and_the_pool_recovers() -> None:
    # sympy expands 9^(9^9), a 370-million-digit integer: math-verify alone would hang here.
    with Grader(workers=1, timeout_s=3.0) as grader:
        started = time.monotonic()
        grades = grader.grade_many([("1", "9^{9^{9}}"), ("70", "70.0")])
        assert time.monotonic() - started < 60
        assert grades[0].reason == "timeout" and not grades[0].correct
        assert grades[1].reason == "correct"
        assert grader.recycled == 1
        assert grader.grade(HUGE, r"2^{25}\times 26!").correct  # the fresh pool works


def _grade_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    return subprocess.run(
        [sys.executable, "-m", "mrsa", "grade", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_grade_prints_verdict_and_reason_exit_0() -> None:
    ok = _grade_cli(r"\frac{1}{576}", r"\dfrac{1}{576}")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("correct")
    bad = _grade_cli("-984", r"The answer is \boxed{984}.")
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.startswith("wrong: wrong") and "984" in bad.stdout
    unparsable = _grade_cli("70", r"\boxed{\sqrt}")
    assert unparsable.returncode == 0 and unparsable.stdout.startswith("wrong: parse_error")


def test_cli_grade_json() -> None:
    proc = _grade_cli("--json", SET10, r"Both: \boxed{\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}}")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["correct"] is True and data["reason"] == "correct"
    assert data["answer"] == r"\frac{-1-\sqrt{17}}{2}, \frac{-1+\sqrt{17}}{2}"
    timed = _grade_cli("--json", "--timeout", "2", "1", "9^{9^{9}}")
    assert timed.returncode == 0 and json.loads(timed.stdout)["reason"] == "timeout"


# -- one rule for "same answer": votes and grades agree (issue 11, item 6) -------------------------


@pytest.mark.parametrize(("gold", "pred", "expected"), PAIRS)
def test_voting_clusters_by_the_grading_rule(gold: str, pred: str, expected: bool) -> None:
    # Before: voting had its own math-verify rule: 0.001736 voted with 1/576 (6 decimal places)
    # although it grades wrong, and 3\,375 did not vote with 3375 although it grades correct.
    assert equivalent(gold, pred) == expected == grade_answer(gold, pred).correct


def test_a_majority_class_holds_only_answers_that_grade_alike() -> None:
    answers = [r"\frac{1}{576}", "0.001736", r"3\,375", "3375", r"\dfrac{1}{576}"]
    assert cluster(answers) == [[0, 4], [1], [2, 3]]


def test_an_oversized_answer_is_graded_as_text_without_math_verify() -> None:
    # As in the engine's votes: a 200 KB boxed sum is never parsed (it cost a grading worker a
    # whole deadline, then a pool restart, and was graded "timeout").
    big = "+".join(["1"] * 100_000)
    with Grader(workers=1, timeout_s=3.0) as grader:
        started = time.monotonic()
        wrong, same = grader.grade_many([("100000", big), (big, big + " ")])
        assert time.monotonic() - started < 3.0
        assert grader.recycled == 0
    assert (wrong.reason, wrong.correct) == ("wrong", False)
    assert wrong.detail is not None and "compared as text" in wrong.detail
    assert same.reason == "correct"
    assert grade_answer("100000", big).reason == "wrong"


POISON = "9^{9^{9}}"


@pytest.mark.timeout(240)
def test_maj_at_n_sets_a_runaway_answer_apart_as_the_engine_does() -> None:
    # Before: a runaway answer timed the whole vote out and maj@N fell back to string classes,
    # so "7" (2 votes) beat 42 = 42.0 = 84/2 (3 votes), unlike `mrsa solve --selection majority`.
    boxed = ["7", "7", POISON, "42", "42.0", r"\frac{84}{2}"]
    records = [
        CandidateRecord(
            config="c",
            dataset="d",
            problem="p",
            seed=0,
            round=0,
            index=i,
            parents=[],
            boxed=answer,
            correct=i >= 3,
            reason="correct" if i >= 3 else "wrong",
            finish_reason="stop",
            decode_tokens=1,
            prompt_tokens=1,
        )
        for i, answer in enumerate(boxed)
    ]
    with Grader(workers=1, timeout_s=3.0) as grader:
        assert majority_choice(boxed, [True] * len(boxed), grader.cluster) == 3
        assert round_outcome(records, grader).majority_correct
