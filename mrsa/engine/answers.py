"""Answer extraction: the content of the last ``\\boxed{...}`` (braces balanced)."""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Structural braces, and escapes that are not: ``\{``/``\}`` are literal braces (a set), ``\\`` is a
# line break (so the brace after it is structural again).
_BRACE = re.compile(r"\\[\\{}]|[{}]")


def _closing_braces(text: str, start: int) -> dict[int, int]:
    """For every structural ``{`` at or after ``start``: the position of its matching ``}``.

    One pass with a stack: linear in ``len(text)`` whatever the nesting, so a model writing
    thousands of unclosed ``\\boxed{`` costs one scan, not one scan per box."""
    closing: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE.finditer(text, start):
        brace = match.group()
        if brace == "{":
            stack.append(match.start())
        elif brace == "}" and stack:
            closing[stack.pop()] = match.start()
    return closing


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` in ``text`` with balanced braces, or ``None``.

    Escaped braces (``\\{``, ``\\}``) are content, not structure. Linear time in ``len(text)``."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    closing = _closing_braces(text, boxes[0].start())
    for match in reversed(boxes):
        start = match.end()
        end = closing.get(start - 1)
        if end is None:
            continue
        inner = text[start:end].strip()
        if inner:
            return inner
    return None


_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*\$?([-+]?\d[\d,]*(?:\.\d+)?(?:/\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def fallback_answer(text: str) -> str | None:
    """For a finished candidate without ``\\boxed{}``: the number after the last "answer is",
    else the last number of the last non-empty line. Small models often skip the box."""
    found = _ANSWER_IS.findall(text)
    if found:
        return str(found[-1]).replace(",", "")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        numbers = _NUMBER.findall(lines[-1])
        if numbers:
            return str(numbers[-1]).replace(",", "").rstrip(".")
    return None


def extract_answer(content: str, trace: str, finished: bool = False) -> str | None:
    """The last ``\\boxed{}`` of the answer part (after ``</think>``), else of the whole trace; for a
    finished candidate with no box, :func:`fallback_answer` of the answer part."""
    boxed = last_boxed(content) or last_boxed(trace)
    if boxed is not None or not finished:
        return boxed
    return fallback_answer(content)


_SPACE = re.compile(r"\s+")


def normalise_answer(answer: str) -> str:
    """A cheap canonical form used to group identical answers before symbolic comparison."""
    text = _SPACE.sub("", answer)
    for wrapper in ("\\text{", "\\mathrm{", "\\textbf{"):
        if text.startswith(wrapper) and text.endswith("}"):
            text = text[len(wrapper) : -1]
    text = (
        text.replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\left", "")
        .replace("\\right", "")
    )
    text = text.rstrip(".")
    if text.startswith("$") and text.endswith("$"):
        text = text.strip("$")
    return text
