"""Answer extraction: the content of the last ``\\boxed{...}`` (braces balanced)."""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` in ``text`` with balanced braces, or ``None``."""
    for match in reversed(list(_BOX.finditer(text))):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            ch = text[pos]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    inner = text[start:pos].strip()
                    if inner:
                        return inner
                    break
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
