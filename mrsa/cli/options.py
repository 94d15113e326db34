"""Command-line flags shared by several commands.

One definition per flag keeps names, defaults and help texts from drifting apart between ``solve``,
``submit``, ``bench``, ``serve`` and ``worker``; the backend flags that set a
:class:`~mrsa.settings.Settings` field spell their flag, so a command may name its parameter after
the field (see :func:`mrsa.cli.common.settings_from_flags`). Help texts name environment variables in
parentheses: typer renders help as rich markup, where ``[env …]`` would be taken for a style tag
and vanish.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from mrsa.backends.factory import BACKEND_KINDS

# -- the problem (solve, submit) -------------------------------------------------------------------

ProblemArg = Annotated[str | None, typer.Argument(help="The problem text ('-' reads stdin).")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Read the problem from a file.")]

# -- Markovian RSA parameters (solve, submit) ------------------------------------------------------

PopulationOpt = Annotated[int | None, typer.Option(help="N: candidates per round.")]
SubsetOpt = Annotated[int | None, typer.Option(help="K: tails per aggregation prompt.")]
RoundsOpt = Annotated[int | None, typer.Option(help="T: aggregation rounds after round 0.")]
BudgetOpt = Annotated[int | None, typer.Option(help="β: max decode tokens of one candidate.")]
TailOpt = Annotated[int | None, typer.Option(help="τ: model tokens carried forward per candidate.")]
ChunkOpt = Annotated[int | None, typer.Option(help="Delethink chunk size in tokens (off by default).")]
CarryoverOpt = Annotated[int | None, typer.Option(help="Tokens a chunked candidate continues from.")]
TailSourceOpt = Annotated[str | None, typer.Option(help="trace, reasoning or answer_or_tail.")]
SelectionOpt = Annotated[str | None, typer.Option(help="majority, aggregate or population.")]
AggregateTemperatureOpt = Annotated[float | None, typer.Option(help="Temperature of the final aggregation.")]
TemperatureOpt = Annotated[float | None, typer.Option(help="Sampling temperature.")]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus sampling mass.")]
TopKOpt = Annotated[int | None, typer.Option(help="Top-k (-1 = off).")]
SeedOpt = Annotated[int | None, typer.Option(help="Job seed (all random choices derive from it).")]
PromptsOpt = Annotated[str | None, typer.Option(help="Prompt template set under prompts/.")]

RSA_FLAGS = (
    "population",
    "subset",
    "rounds",
    "budget",
    "tail",
    "chunk",
    "carryover",
    "tail_source",
    "selection",
    "aggregate_temperature",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "prompts",
)
"""The parameter names of the flags above, as :func:`mrsa.params.resolve_params` overrides."""


def rsa_overrides(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The RSA parameter flags among a command's arguments (``locals()``), unset ones as None."""
    return {name: flags[name] for name in RSA_FLAGS}


# -- the backend (solve, bench, serve, worker) -----------------------------------------------------

BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="Inference server URL (env MRSA_BACKEND_URL); unset = embedded model."),
]
BackendKindOpt = Annotated[
    str | None, typer.Option(help=f"Server type: {', '.join(BACKEND_KINDS)} (env MRSA_BACKEND_KIND).")
]
TokenizerOpt = Annotated[
    Path | None,
    typer.Option(
        help="Triton only: the served model's tokenizer.json (or its folder) (env MRSA_TOKENIZER); "
        "the bundled model's is found by its name."
    ),
]
ConcurrencyOpt = Annotated[
    int | None, typer.Option("--concurrency", help="Requests in flight (default: server capacity).")
]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Backend read timeout, seconds.")]
RetriesOpt = Annotated[int | None, typer.Option("--retries", help="Backend retries on 429/5xx/timeouts.")]
PriorityOpt = Annotated[
    bool | None,
    typer.Option(
        "--priority",
        help="Send each request's priority, later rounds first (env MRSA_BACKEND_PRIORITY): vLLM only, "
        "started with --scheduling-policy priority (it rejects prioritised requests otherwise).",
    ),
]
RedisOpt = Annotated[
    str | None, typer.Option("--redis", help="Redis URL of the job store and queue (env MRSA_REDIS_URL).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
