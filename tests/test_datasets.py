"""Shipped datasets: shape, every gold answer grades correct against itself, malformed files are
refused with the line number, and the wheel carries the data."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evals.datasets import SHIPPED, DatasetError, load_dataset, parse_jsonl
from evals.grading import Grader, boxed_answer, symbolic_equal

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_datasets_load() -> None:
    ids: set[str] = set()
    for name in SHIPPED:
        ds = load_dataset(name)
        assert ds.name == name and len(ds.problems) == 30
        assert len(ds.sha256) == 64
        for p in ds.problems:
            assert p.id.startswith(name) and p.problem and p.answer
        ids |= {p.id for p in ds.problems}
        if name.startswith("aime"):
            assert all(p.answer.isdigit() and 0 <= int(p.answer) <= 999 for p in ds.problems)
    assert len(ids) == 120  # unique across files
    assert (ROOT / "evals" / "datasets" / "SOURCES.md").is_file()
    licence = (ROOT / "evals" / "datasets" / "LICENSE.md").read_text()
    assert "CC BY-NC-SA 4.0" in licence and "MathArena" in licence and "HMMT" in licence and "MAA" in licence


def test_every_gold_answer_boxed_grades_correct_against_itself() -> None:
    golds = [p.answer for name in SHIPPED for p in load_dataset(name).problems]
    texts = [rf"The final answer is $\boxed{{{g}}}$." for g in golds]
    with Grader(workers=2, timeout_s=30.0) as grader:
        grades = grader.grade_many([(g, boxed_answer(t)) for g, t in zip(golds, texts, strict=True)])
    assert [g.reason for g in grades] == ["correct"] * len(golds) == ["correct"] * 120


def test_every_gold_answer_is_equal_to_itself_symbolically() -> None:
    """Not just string equality: math-verify parses and verifies every gold (HMMT included)."""
    failures = [
        p.id
        for name in SHIPPED
        for p in load_dataset(name).problems
        if not symbolic_equal(p.answer, p.answer)
    ]
    assert failures == []


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
