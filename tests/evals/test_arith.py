"""Generated arithmetic sets (evals/arith.py): deterministic for a seed, prefix-stable in N,
distinct problems, gold answers equal to the expression's value, and the ``arith:`` dataset spec."""

from __future__ import annotations

import ast
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evals.arith import ArithSpecError, Level, dataset_name, generate, parse_level, parse_spec, to_jsonl
from evals.datasets import DatasetError, load_dataset
from evals.grading import Grader, boxed_answer
from testkit.simulator.process import running_simulator

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _value_of(expression: str) -> int:
    """The value of ``12 + 30`` or ``2 × 13``, parsed as Python arithmetic (not from the generator)."""
    tree = ast.parse(expression.replace("×", "*"), mode="eval")

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        assert isinstance(node, ast.BinOp), ast.dump(node)
        result: int = _BINOPS[type(node.op)](value(node.left), value(node.right))
        return result

    return value(tree.body)


def _evaluate(problem: str) -> int:
    """The value of the problem's ``What is EXPR?`` (or, on a pick level, of the expression all its
    choices share) computed from its text alone."""
    if problem.startswith("Which is right: "):
        return _evaluate_pick(problem)[0]
    examples, sep, rest = problem.partition("\n\nWhat is ")
    assert examples.startswith("Examples:\n") and sep
    question, sep, instruction = rest.partition("? ")
    assert sep and instruction == r"Give the final answer in \boxed{}, as in the examples."
    return _value_of(question)


def _evaluate_pick(problem: str) -> tuple[int, list[int]]:
    """A pick question's value and its boxed choices; exactly one choice is right and none repeats."""
    assert problem.startswith("Which is right: ") and problem.endswith("?")
    equations = problem.removeprefix("Which is right: ").removesuffix("?").split(" or ")
    expressions = {e.split(" = ")[0] for e in equations}
    assert len(expressions) == 1
    value = _value_of(expressions.pop())
    choices = [int(e.split(" = ")[1].removeprefix("\\boxed{").removesuffix("}")) for e in equations]
    assert len(set(choices)) == len(choices) and choices.count(value) == 1
    assert all(1 <= abs(c - value) <= (3 if value >= 3 else 6) for c in choices if c != value)
    return value, choices


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` without the caller's MRSA_* settings (a developer's MRSA_BACKEND_URL…)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240, env=env)


levels = st.builds(
    lambda op, digits, choices: Level(op=op, digits=tuple(digits), choices=choices),
    st.sampled_from(["add", "sub", "mul"]),
    st.lists(st.integers(1, 4), min_size=2, max_size=3),
    st.sampled_from([0, 0, 2, 3, 7]),
)


@settings(max_examples=60, deadline=None)
@given(level=levels, n=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_generated_sets_are_deterministic_distinct_and_right(level: Level, n: int, seed: int) -> None:
    n = min(n, level.space())
    problems = generate(level, n, seed)
    assert problems == generate(level.name, n, seed)  # same seed, same set
    assert len(problems) == n
    assert len({p.terms for p in problems}) == n  # no expression twice
    assert len({p.id for p in problems}) == n
    for i, p in enumerate(problems):
        assert p.id == f"{level.name}-s{seed}-{i:04d}"
        assert [len(str(t)) for t in p.terms] == list(level.digits)  # exactly d digits each
        assert p.answer == _evaluate(p.problem)
        if level.choices:
            choices = _evaluate_pick(p.problem)[1]
            assert len(choices) == level.choices
            assert level.op == "sub" or min(choices) >= 0
    assert parse_level(level.name) == level
    # A larger N starts with the smaller set, so --limit and a smaller N agree.
    assert generate(level, min(n + 5, level.space()), seed)[:n] == problems


def test_seeds_give_different_sets_and_the_stream_is_pinned() -> None:
    a, b = generate("add2x2", 50, 0), generate("add2x2", 50, 1)
    assert [p.terms for p in a] != [p.terms for p in b]
    # Pinned values: a change of generator (or of Python's string seeding) changes every shipped
    # result recorded in docs/evaluation.md, so it must show up here.
    assert [(p.terms, p.answer) for p in a[:3]] == [((35, 27), 62), ((11, 55), 66), ((25, 98), 123)]
    assert a[0].problem == (
        "Examples:\n12 + 30 = \\boxed{42}\n41 + 33 = \\boxed{74}\n\n"
        "What is 35 + 27? Give the final answer in \\boxed{}, as in the examples."
    )
    assert [p.terms for p in generate("add1x1", 3, 0)] == [(2, 4), (7, 6), (5, 2)]  # the recorded sweep's
    assert generate("mul1x2", 1, 0)[0].problem.split("What is ")[1].count("×") == 1
    assert generate("sub2x2x2", 1, 0)[0].problem.split("What is ")[1].count(" - ") == 2
    # The pick level of the recorded vLLM sweep (docs/evaluation.md, arith:pick3add1x1:81).
    assert [p.problem for p in generate("pick3add1x1", 2, 0)] == [
        "Which is right: 5 + 3 = \\boxed{6} or 5 + 3 = \\boxed{8} or 5 + 3 = \\boxed{7}?",
        "Which is right: 1 + 5 = \\boxed{5} or 1 + 5 = \\boxed{9} or 1 + 5 = \\boxed{6}?",
    ]


def test_pick_levels_put_the_right_choice_everywhere_and_cover_the_level() -> None:
    problems = generate("pick3add1x1", 81, 0)
    assert sorted(p.terms for p in problems) == [(a, b) for a in range(1, 10) for b in range(1, 10)]
    positions = [_evaluate_pick(p.problem)[1].index(p.answer) for p in problems]
    # The right choice's place is drawn, not fixed: a model that always boxes the first (or last)
    # choice is right about a third of the time, not always or never.
    assert all(15 <= positions.count(i) <= 40 for i in range(3)), positions
    assert all(_evaluate_pick(p.problem)[0] == p.answer for p in generate("pick7sub2x2", 30, 4))
    # 1 × 1 has only one near miss below it that is ≥ 0: the others come from above, never < 0.
    [one] = [p for p in generate("pick7mul1x1", 81, 0) if p.terms == (1, 1)]
    assert sorted(_evaluate_pick(one.problem)[1]) == [0, 1, 2, 3, 4, 5, 6]


def test_a_level_can_be_exhausted_but_not_exceeded() -> None:
    every = generate("add1x1", 81, 3)
    assert sorted(p.terms for p in every) == [(a, b) for a in range(1, 10) for b in range(1, 10)]
    with pytest.raises(ArithSpecError, match="only 81 distinct problems"):
        generate("add1x1", 82)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("arith:add2", "is not OP followed by the digits"),
        ("arith:div2x2", "is not OP followed by the digits"),
        ("arith:add0x2", "is not OP followed by the digits"),
        ("arith:pick1add1x1", "is not OP followed by the digits"),
        ("arith:pick8add1x1", "a pick level has 2 to 7 choices"),
        ("arith:add2x2:ten", "N and SEED must be integers"),
        ("arith:add2x2:0", "N=0 must be between"),
        ("arith:add2x2:10:-1", "seed -1 must be ≥ 0"),
        ("arith:add2x2:10:0:9", "is not arith:LEVEL[:N[:SEED]]"),
    ],
)
def test_bad_specs_are_refused_as_dataset_errors(spec: str, message: str) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset(spec)
    assert str(err.value).startswith("dataset: arith: ") and message in str(err.value)


def test_arith_spec_is_a_dataset() -> None:
    assert parse_spec("arith:mul1x2") == (parse_level("mul1x2"), 200, 0)
    ds = load_dataset("arith:add2x2:40:7")
    assert ds.name == dataset_name(parse_level("add2x2"), 40, 7) == "arith-add2x2-n40-s7"
    assert ds.path == "arith:add2x2:40:7"
    assert [(p.id, p.problem, p.answer) for p in ds.problems] == [
        (p.id, p.problem, str(p.answer)) for p in generate("add2x2", 40, 7)
    ]
    assert load_dataset("arith:add2x2:40:7").sha256 == ds.sha256  # a resumed sweep sees the same set
    assert load_dataset("arith:add2x2:41:7").sha256 != ds.sha256


def test_gold_answers_grade_correct_boxed_and_wrong_when_off_by_one() -> None:
    problems = generate("sub2x2", 20, 0) + generate("mul2x2", 20, 0)
    assert any(p.answer < 0 for p in problems)  # negative golds are in the sample
    pairs = [(str(p.answer), boxed_answer(rf"so the answer is $\boxed{{{p.answer}}}$")) for p in problems]
    pairs += [(str(p.answer), boxed_answer(rf"\boxed{{{p.answer + 1}}}")) for p in problems]
    with Grader(workers=1, timeout_s=30.0) as grader:
        reasons = [g.reason for g in grader.grade_many(pairs)]
    assert reasons == ["correct"] * 40 + ["wrong"] * 40


def test_cli_prints_the_jsonl_a_file_dataset_reads_back() -> None:
    proc = _python("-m", "evals.arith", "mul1x2", "--n", "5", "--seed", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == to_jsonl(generate("mul1x2", 5, 2))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["answer"] for r in rows] == [str(_evaluate(r["problem"])) for r in rows]
    bad = _python("-m", "evals.arith", "add1x1", "--n", "100")
    assert bad.returncode == 2 and "only 81 distinct problems" in bad.stderr


# The recorded sweep's shape (docs/evaluation.md, "A real model on generated arithmetic"), shrunk:
# Markovian RSA and self-consistency at its matched total, two commands into one run folder.
SIM_FLAGS = ["--max-num-seqs=8", "--step-base-ms=0.2", "--median-tokens=20", "--max-model-len=4096"]
RSA_GRID = "population=2;subset=2;rounds=1;budget=48;tail=16;temperature=0.8"
SC_GRID = "population=4;rounds=0;budget=48;temperature=0.8"


def test_arith_sweep_with_its_matched_self_consistency_on_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with running_simulator(SIM_FLAGS) as sim:
        for grid in (RSA_GRID, SC_GRID):
            args = ["-d", "arith:add1x1:81", "--limit", "2", "--preset", "smoke", "--grid", grid]
            proc = _python(
                "-m", "mrsa", "bench", *args, "--backend", sim, "--out", str(out), "--quiet", "--json"
            )
            assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["records"] == 2 * 2 * 2 + 2 * 4
    assert summary["units_complete"] == summary["units_total"] == 4
    report = _python("-m", "mrsa", "report", str(out), "--json")
    assert report.returncode == 0, report.stderr
    metrics = json.loads(report.stdout)
    rsa_id, sc_id = f"smoke:{RSA_GRID.replace(';', ',')}", f"smoke:{SC_GRID.replace(';', ',')}"
    [group] = [g for g in metrics["groups"] if g["config"] == rsa_id]
    assert group["dataset"] == "arith-add1x1-n81-s0" and [r["round"] for r in group["rounds"]] == [0, 1]
    matched = [b for b in metrics["baselines"] if "matched total" in b["method"]]
    assert [(b["config"], b["metric"], b["source"]) for b in matched] == [(rsa_id, "maj@4", sc_id)]
    [sc] = [g for g in metrics["groups"] if g["config"] == sc_id]
    assert matched[0]["estimate"]["value"] == sc["rounds"][0]["maj"]["value"]


def test_examples_in_the_problem_are_right_and_never_a_one_digit_sum() -> None:
    for level in ("add1x1", "sub2x2", "mul1x2"):
        examples = generate(level, 1)[0].problem.split("\n\n")[0].splitlines()[1:]
        assert len(examples) == 2
        for line in examples:
            expression, boxed = line.split(" = ")
            assert boxed == rf"\boxed{{{_value_of(expression)}}}"
    example_answers = {42, 74}
    assert not example_answers & {p.answer for p in generate("add1x1", 81)}
