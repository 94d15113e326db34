"""Benchmark datasets: the shipped JSONL files next to this module, any JSONL file of
``{"id", "problem", "answer"}`` objects (extra keys are ignored), or a generated arithmetic set
named ``arith:LEVEL[:N[:SEED]]`` (:mod:`evals.arith`).

Loading is all-or-nothing: a malformed line raises :class:`DatasetError` naming the file and the
line number, so a sweep never starts on half a dataset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DATA_DIR = Path(__file__).resolve().parent
SHIPPED: tuple[str, ...] = ("aime2024", "aime2025", "aime2026", "hmmt_feb2025", "hmmt_feb2026")


class DatasetError(ValueError):
    """A dataset that cannot be used: unknown name, unreadable file or a malformed line."""


class Problem(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    problem: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="The gold answer (LaTeX allowed).")


class Dataset(BaseModel):
    name: str = Field(description="Shipped name, or the file's stem for a path.")
    path: str
    sha256: str = Field(description="Digest of the file's bytes (recorded in a run's manifest).")
    problems: list[Problem]


def shipped_path(name: str) -> Path:
    return DATA_DIR / f"{name}.jsonl"


def _check_line(raw: str, where: str) -> Problem:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a JSON object with id, problem and answer")
    for key in ("id", "problem", "answer"):
        if key not in data:
            raise DatasetError(f"{where}: missing key {key!r}")
        value = data[key]
        if isinstance(value, int) and not isinstance(value, bool) and key in ("id", "answer"):
            data[key] = str(value)  # AIME answers and numeric ids written as JSON numbers
        elif not isinstance(value, str):
            raise DatasetError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if not str(data[key]).strip():
            raise DatasetError(f"{where}: {key!r} is empty")
    return Problem(id=data["id"].strip(), problem=data["problem"].strip(), answer=data["answer"].strip())


def parse_jsonl(text: str, source: str) -> list[Problem]:
    """Problems of a JSONL text (blank lines skipped); raises :class:`DatasetError` on the first
    malformed line, or a duplicate id, naming ``source:LINE``."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source}:{number}"
        problem = _check_line(raw, where)
        if problem.id in seen:
            raise DatasetError(f"{where}: duplicate id {problem.id!r} (first on line {seen[problem.id]})")
        seen[problem.id] = number
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{source}: no problems in the file")
    return problems


def _generated(spec: str) -> Dataset:
    """A generated arithmetic set, held as the JSONL text it would be in a file, so its digest in a
    run's manifest proves a resumed sweep generated the same problems."""
    from evals.arith import ArithSpecError, dataset_name, generate, parse_spec, to_jsonl

    try:
        level, n, seed = parse_spec(spec)
        text = to_jsonl(generate(level, n, seed))
    except ArithSpecError as exc:
        raise DatasetError(f"dataset: {exc}") from None
    return Dataset(
        name=dataset_name(level, n, seed),
        path=spec,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        problems=parse_jsonl(text, spec),
    )


def load_dataset(name_or_path: str) -> Dataset:
    """A shipped dataset by name (``aime2025``), a generated one (``arith:add2x2:200:0``) or any
    JSONL file by path."""
    if name_or_path.startswith("arith:"):
        return _generated(name_or_path)
    path = shipped_path(name_or_path) if name_or_path in SHIPPED else Path(name_or_path)
    if not path.is_file():
        raise DatasetError(
            f"dataset: {name_or_path!r} is neither a shipped dataset ({', '.join(SHIPPED)}) nor a file"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"dataset: cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    name = name_or_path if name_or_path in SHIPPED else path.stem
    return Dataset(
        name=name,
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        problems=parse_jsonl(text, str(path)),
    )
