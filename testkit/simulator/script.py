"""Scripted answers (``--answers FILE``): the simulator answers a dataset's problems with their
gold answers, and each problem can be told how to behave, so a sweep's numbers are known in
advance.

FILE is JSONL, one ``{"problem": TEXT, "answer": GOLD}`` object per line (a dataset file works as
it is: other keys are ignored), with an optional ``"sim"`` behaviour:

- absent: right (the gold answer, boxed) with probability ``--correct-share``, else a wrong number;
- ``right`` / ``wrong``: always the gold answer / always a wrong number, boxed;
- ``unboxed``: the gold answer written without a box ("The answer is GOLD.");
- ``unparsed``: a box with no mathematics in it (``\\boxed{\\quad}``);
- ``runaway``: never stops: cut at ``max_tokens`` (finish reason ``length``);
- ``error``: the server answers HTTP 500, as a crashed engine does.

A request belongs to a problem when its prompt contains the problem's text (round-0 and
aggregation prompts both quote it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Behaviour = Literal["draw", "right", "wrong", "unboxed", "unparsed", "runaway", "error"]
BEHAVIOURS: tuple[Behaviour, ...] = ("draw", "right", "wrong", "unboxed", "unparsed", "runaway", "error")


@dataclass(frozen=True)
class Scripted:
    problem: str
    answer: str
    behaviour: Behaviour = "draw"


def load_script(path: str) -> list[Scripted]:
    """The scripted problems of ``path`` ("" → none); raises ``ValueError`` naming a bad line."""
    if not path:
        return []
    out = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        data = json.loads(raw)
        behaviour = data.get("sim", "draw")
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"{path}:{number}: sim must be one of {', '.join(BEHAVIOURS)}")
        out.append(
            Scripted(problem=str(data["problem"]).strip(), answer=str(data["answer"]), behaviour=behaviour)
        )
    return out


def scripted_for(script: list[Scripted], prompt: str) -> Scripted | None:
    """The scripted problem ``prompt`` quotes (the longest, when one problem's text holds another's)."""
    found = [s for s in script if s.problem and s.problem in prompt]
    return max(found, key=lambda s: len(s.problem)) if found else None
