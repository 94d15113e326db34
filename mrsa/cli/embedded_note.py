"""The line ``mrsa solve`` prints after an answer from the embedded default model.

A first run on the embedded SmolLM2-135M often gets simple arithmetic wrong, which reads as a
broken tool unless the output says what ran. The line says it (a pipeline check, not a math
model) and gives the command that runs the same problem on a real server.
"""

from __future__ import annotations

import shlex
from pathlib import Path

MAX_QUOTED_PROBLEM = 100  # longer problems are shown as "…", not pasted into the hint


def problem_argument(problem: str | None, file: Path | None) -> str:
    """How the hint's command names the problem: as the user gave it when that is short."""
    if file is not None:
        return f"--file {shlex.quote(str(file))}"
    if problem is not None and problem.strip() == "-":
        return "-"
    text = (problem or "").strip()
    if text and "\n" not in text and len(text) <= MAX_QUOTED_PROBLEM:
        return shlex.quote(text)
    return '"…"'


def embedded_note(problem: str | None, file: Path | None) -> str:
    """One plain line: what ran, and the command that points mrsa at a real server."""
    return (
        "This ran the embedded SmolLM2-135M-Instruct on the CPU: a pipeline check, not a math model. "
        "For real answers, point mrsa at a server: mrsa solve --backend http://HOST:8000 "
        f"--preset zaya1 {problem_argument(problem, file)}"
    )
