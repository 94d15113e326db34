"""Prompt templates: plain text files under ``prompts/NAME/`` (``string.Template`` syntax).

The problem always comes first and is byte-identical across a job's prompts, so vLLM/SGLang
prefix caching reuses it. Installed wheels carry the templates as ``mrsa/_prompts``; a source
checkout reads the top-level ``prompts/`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from string import Template

_FILES = ("round0", "aggregate", "aggregate_single", "candidate", "continue", "continue_head", "summarize")


class UnknownPromptSetError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"prompts: unknown prompt set {name!r}; available: {', '.join(available_sets())}")


def prompts_root() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_prompts"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "prompts"


def available_sets() -> list[str]:
    root = prompts_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@cache
def _template(prompt_set: str, name: str) -> Template:
    path = prompts_root() / prompt_set / f"{name}.txt"
    if not path.is_file():
        raise UnknownPromptSetError(prompt_set)
    return Template(path.read_text(encoding="utf-8").rstrip("\n"))


def check_prompt_set(prompt_set: str) -> None:
    """Raise :class:`UnknownPromptSetError` unless every template of the set exists."""
    for name in _FILES:
        _template(prompt_set, name)


def round0_prompt(prompt_set: str, problem: str) -> str:
    return _template(prompt_set, "round0").substitute(problem=problem)


def aggregation_prompt(prompt_set: str, problem: str, tails: list[str]) -> str:
    """The aggregation prompt holding ``tails`` in order (K = 1 uses the single-attempt wording)."""
    block = _template(prompt_set, "candidate")
    candidates = "\n\n".join(block.substitute(number=i + 1, tail=t) for i, t in enumerate(tails))
    name = "aggregate_single" if len(tails) == 1 else "aggregate"
    return _template(prompt_set, name).substitute(problem=problem, k=len(tails), candidates=candidates)


def continuation_prompt(prompt_set: str, prompt: str, carryover: str, head: str = "") -> str:
    """A new-turn continuation, for servers that cannot continue an assistant prefill raw: the
    candidate's own ``carryover`` (its last tokens) and, when a Delethink ``head`` is kept apart from
    it (the first tokens, with a gap between), that head before it."""
    if not head:
        return _template(prompt_set, "continue").substitute(prompt=prompt, carryover=carryover)
    return _template(prompt_set, "continue_head").substitute(prompt=prompt, head=head, carryover=carryover)


def summary_prompt(prompt_set: str, problem: str, work: str, budget: int) -> str:
    """The request for a bounded summary of one candidate's ``work`` (tail_mode ``summarize``);
    ``budget`` is the summary's limit in tokens, told to the model so it can plan for it."""
    return _template(prompt_set, "summarize").substitute(problem=problem, work=work, budget=budget)


ROLE_LABELS = {
    "system": "System",
    "developer": "Developer",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}


def conversation_problem(turns: Sequence[tuple[str, str]]) -> str:
    """The problem of a chat: the whole conversation up to its last user turn, as one text.

    ``turns`` are (role, text) pairs in order. A lone user turn is the problem as written; otherwise
    each turn with text becomes ``Role: text`` and the turns are joined by blank lines, so the system
    prompt and earlier turns are part of the context. Turns after the last user turn (an assistant
    prefill) are left out. The one rendering every prompt of a job shares, byte for byte. '' when
    there is no user turn with text."""
    last_user = max(
        (i for i, (role, text) in enumerate(turns) if role == "user" and text.strip()), default=-1
    )
    if last_user < 0:
        return ""
    kept = [(role, text.strip()) for role, text in turns[: last_user + 1] if text.strip()]
    if len(kept) == 1:
        return kept[0][1]
    return "\n\n".join(f"{ROLE_LABELS.get(role, role.capitalize())}: {text}" for role, text in kept)
