"""Generated arithmetic problems: a seeded set whose difficulty is chosen, for models too small for
the shipped contest sets.

The embedded SmolLM2-135M scores 0 on AIME, so a sweep on it shows the pipeline, never whether
aggregation moves accuracy. Integer arithmetic with a chosen number of terms and digits gives a set
on which such a model is right sometimes — neither always nor never — so there is something for
aggregation to improve or spoil.

A *level* names the operation and the digits of each term, ``x`` between terms:

* ``add2x2``: a two-digit plus a two-digit number; ``add1x1x1``: three one-digit numbers summed;
* ``sub3x2``: a three-digit minus a two-digit number (terms after the first are subtracted; the
  answer may be negative);
* ``mul1x2``: a one-digit times a two-digit number;
* ``pick3add1x1``: ``add1x1`` asked as a choice among 3 boxed equations, the right one and 2
  off by 1 to 3 (``pickC`` before any level, C from 2 to 7). SmolLM2-135M boxes almost none of
  its own sums on the free levels (docs/evaluation.md); shown boxed equations it boxes one about
  half the time, the right one more often than chance, so its round-0 pass@1 lands mid-range.
  Chance is 1/C of the answers it boxes.

``mrsa bench --dataset arith:LEVEL[:N[:SEED]]`` (:func:`parse_spec`, default N = 200, seed 0) runs
a generated set without a file; ``python -m evals.arith LEVEL --n N --seed S`` prints it as JSONL.
Generation is sequential from one RNG seeded by the level and seed (a string seed, hashed with
SHA-512, not Python's per-process ``hash``), so a set is the same on every machine (a test pins
its first problems), and the first problems of a larger N are the problems of a smaller one
(``--limit`` and a larger N agree). Expressions never repeat within a set.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from dataclasses import dataclass

PREFIX = "arith:"
DEFAULT_N = 200
MAX_N = 100_000
_OPS = {"add": "+", "sub": "-", "mul": "×"}
# Two worked examples of the operation, in the problem text. SmolLM2-135M, asked only to "give the
# final answer within \boxed{}", almost never does (probing: 0 boxed answers in 11 on one-digit
# sums), and told "written as \boxed{answer}" it copies the word "answer". Examples make the format
# visible; their answers (36 and more) are above every one- and two-term one-digit sum, so on those
# levels an answer copied from an example is never right by accident.
_EXAMPLES = {
    "add": ((12, 30), (41, 33)),
    "sub": ((90, 15), (64, 22)),
    "mul": ((12, 3), (21, 4)),
}
_LEVEL = re.compile(r"^(?:pick([2-9]))?(add|sub|mul)([1-9](?:x[1-9])+)$")
# A pick level's wrong choices: the answer moved by 1 to 3 either way (never below 0 unless the
# operation can give a negative answer), so a wrong choice is a near miss, not an absurd number.
# Changing these or the order they are drawn in changes every pick set, recorded results included.
_OFFSETS = (-3, -2, -1, 1, 2, 3)


class ArithSpecError(ValueError):
    """A level or ``arith:`` spec that names no set (bad syntax, or more problems than exist)."""


@dataclass(frozen=True)
class Level:
    op: str
    digits: tuple[int, ...]
    choices: int = 0  # 0: answer freely; C ≥ 2: pick among C boxed equations

    @property
    def name(self) -> str:
        pick = f"pick{self.choices}" if self.choices else ""
        return pick + self.op + "x".join(str(d) for d in self.digits)

    def space(self) -> int:
        """How many distinct expressions the level has (terms with exactly ``d`` digits each)."""
        return math.prod(9 * 10 ** (d - 1) for d in self.digits)


@dataclass(frozen=True)
class ArithProblem:
    id: str
    problem: str
    answer: int
    terms: tuple[int, ...]


def parse_level(text: str) -> Level:
    match = _LEVEL.match(text.strip())
    if match is None:
        raise ArithSpecError(
            f"arith: level {text!r} is not OP followed by the digits of each term, 'x' between them "
            "(OP add, sub or mul; e.g. add2x2, add1x1x1, mul1x2), optionally after pickC "
            "(C choices, e.g. pick3add1x1)"
        )
    level = Level(
        op=match.group(2),
        digits=tuple(int(d) for d in match.group(3).split("x")),
        choices=int(match.group(1) or 0),
    )
    _check_choices(level)
    return level


def _check_choices(level: Level) -> None:
    if level.choices and not 2 <= level.choices <= len(_OFFSETS) + 1:
        raise ArithSpecError(f"arith: level {level.name}: a pick level has 2 to {len(_OFFSETS) + 1} choices")


def parse_spec(spec: str) -> tuple[Level, int, int]:
    """``arith:LEVEL[:N[:SEED]]`` → (level, N, seed)."""
    if not spec.startswith(PREFIX):
        raise ArithSpecError(f"arith: {spec!r} does not start with {PREFIX!r}")
    parts = spec[len(PREFIX) :].split(":")
    if not 1 <= len(parts) <= 3:
        raise ArithSpecError(f"arith: {spec!r} is not arith:LEVEL[:N[:SEED]] (e.g. arith:add2x2:200:0)")
    level = parse_level(parts[0])
    try:
        n = int(parts[1]) if len(parts) > 1 else DEFAULT_N
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise ArithSpecError(f"arith: {spec!r}: N and SEED must be integers") from None
    return level, n, seed


def dataset_name(level: Level, n: int, seed: int) -> str:
    """The set's name in a run folder: level, size and seed, so two different sets never share one."""
    return f"arith-{level.name}-n{n}-s{seed}"


def _expression(op: str, terms: tuple[int, ...]) -> tuple[str, int]:
    symbol = _OPS[op]
    text = f" {symbol} ".join(str(t) for t in terms)
    if op == "add":
        return text, sum(terms)
    if op == "mul":
        return text, math.prod(terms)
    return text, terms[0] - sum(terms[1:])


def _pick_question(rng: random.Random, op: str, text: str, value: int, choices: int) -> str:
    """``Which is right: 3 + 4 = \\boxed{6} or 3 + 4 = \\boxed{7} or …?``: the right equation and
    ``choices - 1`` near misses, in an order drawn from ``rng``."""
    offsets = [d for d in _OFFSETS if op == "sub" or value + d >= 0]
    # Near 0 (``1 × 1``) too few near misses are ≥ 0: the next ones above stand in for them.
    offsets += range(_OFFSETS[-1] + 1, _OFFSETS[-1] + 1 + max(0, choices - 1 - len(offsets)))
    values = [value + d for d in rng.sample(offsets, choices - 1)] + [value]
    rng.shuffle(values)
    return "Which is right: " + " or ".join(f"{text} = \\boxed{{{v}}}" for v in values) + "?"


def generate(level: Level | str, n: int, seed: int = 0) -> list[ArithProblem]:
    """``n`` distinct problems of ``level``, deterministic for (level, seed) and prefix-stable in ``n``."""
    lvl = parse_level(level) if isinstance(level, str) else level
    if not 1 <= n <= MAX_N:
        raise ArithSpecError(f"arith: N={n} must be between 1 and {MAX_N}")
    if n > lvl.space():
        raise ArithSpecError(f"arith: level {lvl.name} has only {lvl.space()} distinct problems, not {n}")
    if seed < 0:
        raise ArithSpecError(f"arith: seed {seed} must be ≥ 0")
    _check_choices(lvl)
    # A string seed is hashed with SHA-512 by random.seed: the same stream everywhere.
    rng = random.Random(f"arith:{lvl.name}:{seed}")
    examples = (
        "Examples:\n"
        + "".join("{} = \\boxed{{{}}}\n".format(*_expression(lvl.op, pair)) for pair in _EXAMPLES[lvl.op])
        + "\n"
    )
    seen: set[tuple[int, ...]] = set()
    out: list[ArithProblem] = []
    while len(out) < n:
        terms = tuple(rng.randint(10 ** (d - 1), 10**d - 1) for d in lvl.digits)
        if terms in seen:
            continue
        seen.add(terms)
        text, value = _expression(lvl.op, terms)
        # A pick level draws its choices from the same stream right after the terms, so its sets
        # stay prefix-stable; a free level draws nothing more (its pinned sets are unchanged).
        problem = (
            _pick_question(rng, lvl.op, text, value, lvl.choices)
            if lvl.choices
            else f"{examples}What is {text}? Give the final answer in \\boxed{{}}, as in the examples."
        )
        out.append(
            ArithProblem(
                id=f"{lvl.name}-s{seed}-{len(out):04d}",
                problem=problem,
                answer=value,
                terms=terms,
            )
        )
    return out


def to_jsonl(problems: list[ArithProblem]) -> str:
    """The dataset format of :mod:`evals.datasets` (``terms`` is an extra key, ignored there)."""
    return "".join(
        json.dumps({"id": p.id, "problem": p.problem, "answer": str(p.answer), "terms": list(p.terms)}) + "\n"
        for p in problems
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evals.arith", description="Print a generated arithmetic set as JSONL."
    )
    parser.add_argument("level", help="e.g. add2x2, add1x1x1, sub3x2, mul1x2, pick3add1x1")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"problems (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(to_jsonl(generate(args.level, args.n, args.seed)))
    except ArithSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
