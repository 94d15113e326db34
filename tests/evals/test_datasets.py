"""Shipped datasets: shape, every gold answer grades correct against itself, malformed files are
refused with the line number, and the wheel carries the data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from evals.datasets import SHIPPED, DatasetError, load_dataset, parse_jsonl
from evals.grading import Grader, boxed_answer, grade_answer
from mrsa.engine.equivalence import symbolic

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_datasets_load() -> None:
    ids: set[str] = set()
    for name in SHIPPED:
        ds = load_dataset(name)
        assert ds.name == name and len(ds.problems) == (33 if name == "hmmt_feb2026" else 30)
        assert len(ds.sha256) == 64
        for p in ds.problems:
            assert p.id.startswith(name) and p.problem and p.answer
        ids |= {p.id for p in ds.problems}
        if name.startswith("aime"):
            assert all(p.answer.isdigit() and 0 <= int(p.answer) <= 999 for p in ds.problems)
    assert len(ids) == 153  # unique across files
    assert (ROOT / "evals" / "datasets" / "SOURCES.md").is_file()
    licence = (ROOT / "evals" / "datasets" / "LICENSE.md").read_text()
    assert "CC BY-NC-SA 4.0" in licence and "MathArena" in licence and "HMMT" in licence and "MAA" in licence


def test_every_gold_answer_boxed_grades_correct_against_itself() -> None:
    golds = [p.answer for name in SHIPPED for p in load_dataset(name).problems]
    texts = [rf"The final answer is $\boxed{{{g}}}$." for g in golds]
    with Grader(workers=2, timeout_s=30.0) as grader:
        grades = grader.grade_many([(g, boxed_answer(t)) for g, t in zip(golds, texts, strict=True)])
    assert [g.reason for g in grades] == ["correct"] * len(golds) == ["correct"] * 153


def test_every_gold_answer_is_equal_to_itself_symbolically() -> None:
    """Not just string equality: math-verify parses and verifies every gold (HMMT included)."""
    failures = [
        p.id
        for name in SHIPPED
        for p in load_dataset(name).problems
        if not symbolic(p.answer, p.answer).equal
    ]
    assert failures == []


# One rewrite per HMMT February 2026 gold answer, as a model might box it: fractions as a/b or
# decimals, radicals and powers in another form, reordered sums, thousands separators, units,
# degrees dropped, "x = …". Written by hand, in problem order.
HMMT26_REWRITES = [
    "-1/21",
    "420,261",
    "48.0",
    "3.5",
    r"1\,230",
    r"3{,}840",
    r"\frac{1}{\sqrt[3]{3+\sqrt{6}}}",
    r"\text{279}",
    r"50 - \frac{50}{2^{101}-1}",
    "x = 289",
    "0.4",
    "875/128",
    "18^2",
    r"\dfrac{63}{256}",
    r"\binom{10}{5}",
    r"-\frac{\pi}{2} + 2",
    "1,574",
    r"6\,992",
    r"499\text{ integers}",
    r"20\,460",
    "18.00",
    r"\mathbf{191}",
    r"\sqrt{125}",
    r"\frac{7\sqrt{3}}{3}",
    r"\sqrt{384}",
    r"-1 + \sqrt{17}",
    "74",
    "69^{1/2}",
    r"\sqrt{11}+3",
    r"\frac{2\sqrt{435}}{3}",
    r"3 \cdot 9^{1012}",
    "M = 10",
    r"3\,037",
]


def test_hmmt26_golds_grade_equal_to_themselves_and_to_a_rewrite() -> None:
    golds = [p.answer for p in load_dataset("hmmt_feb2026").problems]
    assert len(golds) == len(HMMT26_REWRITES) == 33
    assert all(g != r for g, r in zip(golds, HMMT26_REWRITES, strict=True))
    pairs = [(g, g) for g in golds] + list(zip(golds, HMMT26_REWRITES, strict=True))
    started = time.monotonic()
    with Grader(workers=2, timeout_s=10.0) as grader:
        grades = grader.grade_many(pairs)
    elapsed = time.monotonic() - started
    assert [(g.reason, pair) for g, pair in zip(grades, pairs, strict=True) if not g.correct] == []
    assert elapsed < 60, f"66 answers took {elapsed:.1f}s to grade"


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        # Through floats these are all "equal": 3^2025 is ~1e966 (inf as a float), and the + 1 or
        # the exponent's last digit vanish in a float's 53 bits.
        ("3^{2025}", "3^{2025} + 1"),
        ("3^{2025}", "3^{2024}"),
        ("3^{2025}", "3^{2026}"),
        ("3^{2025}", "3^{2025.000001}"),
        (r"50(1 - \frac{1}{2^{101} - 1})", "50"),
        (r"(3+\sqrt{6})^{-1/3}", "0.568"),
    ],
)
def test_huge_powers_are_compared_exactly_not_through_floats(gold: str, answer: str) -> None:
    started = time.monotonic()
    grade = grade_answer(gold, answer)
    assert (grade.reason, grade.correct) == ("wrong", False)
    assert time.monotonic() - started < 10  # exact, and bounded


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "problem": "p"', "not valid JSON"),
        ('["x", "p", "1"]', "expected a JSON object"),
        ('{"id": "x", "problem": "p"}', "missing key 'answer'"),
        ('{"id": "x", "problem": 3, "answer": "1"}', "'problem' must be a string"),
        ('{"id": "x", "problem": "p", "answer": "  "}', "'answer' is empty"),
        ('{"id": "a", "problem": "p", "answer": "1"}', "duplicate id 'a' (first on line 1)"),
    ],
)
def test_malformed_line_names_file_and_line(line: str, message: str) -> None:
    text = '{"id": "a", "problem": "p", "answer": "1"}\n\n' + line + "\n"
    with pytest.raises(DatasetError) as err:
        parse_jsonl(text, "bad.jsonl")
    assert str(err.value).startswith("bad.jsonl:3: ") and message in str(err.value)


def test_any_jsonl_path_is_a_dataset(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"id": "q1", "problem": "1+1?", "answer": 2, "source": "extra keys are ignored"})
    )
    ds = load_dataset(str(path))
    assert ds.name == "mine" and ds.problems[0].answer == "2"
    with pytest.raises(DatasetError, match="neither a shipped dataset"):
        load_dataset("aime1999")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no problems"):
        load_dataset(str(tmp_path / "empty.jsonl"))


def test_wheel_ships_the_datasets(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = list(out.glob("mrsa-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"evals/datasets/{name}.jsonl" in names
    assert "evals/datasets/SOURCES.md" in names and "evals/datasets/LICENSE.md" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from evals.datasets import load_dataset, DATA_DIR; import pathlib;"
        f"assert DATA_DIR == pathlib.Path({str(site / 'evals' / 'datasets')!r}), DATA_DIR;"
        "print(len(load_dataset('hmmt_feb2025').problems))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "30"
