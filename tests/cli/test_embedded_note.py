"""How the line after an embedded-model answer names the problem in its command (unit)."""

from __future__ import annotations

import shlex
from pathlib import Path

from mrsa.cli.embedded_note import MAX_QUOTED_PROBLEM, embedded_note, problem_argument


def test_a_short_problem_is_quoted_for_the_shell() -> None:
    arg = problem_argument("What is 7*6? It's easy", None)
    assert shlex.split(arg) == ["What is 7*6? It's easy"]


def test_a_file_is_named_as_given() -> None:
    assert shlex.split(problem_argument(None, Path("my problems/p 1.tex"))) == [
        "--file",
        "my problems/p 1.tex",
    ]


def test_stdin_stays_stdin() -> None:
    assert problem_argument(" - ", None) == "-"


def test_long_or_multiline_problems_are_elided() -> None:
    assert problem_argument("x" * (MAX_QUOTED_PROBLEM + 1), None) == '"…"'
    assert problem_argument("line one\nline two", None) == '"…"'


def test_the_note_is_one_line_ending_in_the_command() -> None:
    note = embedded_note("What is 7*6?", None)
    assert "\n" not in note
    assert "pipeline check, not a math model" in note
    command = note.split("point mrsa at a server: ", 1)[1]
    assert shlex.split(command) == [
        "mrsa", "solve", "--backend", "http://HOST:8000", "--preset", "zaya1", "What is 7*6?",
    ]  # fmt: skip
