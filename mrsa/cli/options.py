"""Command-line flags shared by several commands.

One definition per flag keeps names, defaults and help texts from drifting apart between ``solve``,
``submit``, ``bench``, ``serve`` and ``worker``. The Markovian RSA flags are not written here at
all but derived from :class:`~mrsa.params.RSAParams`' fields (:func:`rsa_flags`); the backend flags
that set a :class:`~mrsa.settings.Settings` field spell their flag, so a command may name its
parameter after the field (see :func:`mrsa.cli.common.settings_from_flags`). Help texts name environment variables in
parentheses: typer renders help as rich markup, where ``[env …]`` would be taken for a style tag
and vanish.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from inspect import Parameter
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mrsa.backends.factory import BACKEND_KINDS
from mrsa.params import knobs, nest_overrides

R = TypeVar("R")
KEYWORD_ONLY = Parameter.KEYWORD_ONLY

# -- the problem (solve, submit) -------------------------------------------------------------------

ProblemArg = Annotated[str | None, typer.Argument(help="The problem text ('-' reads stdin).")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Read the problem from a file.")]

# -- Markovian RSA parameters (solve, submit) ------------------------------------------------------


def _flag(field: FieldInfo) -> Any:
    """The typer annotation of one knob's flag: its type or None (unset keeps the preset's value) and
    the field's description as help. Values are checked by ``RSAParams`` (as for the REST API), so
    a bad one exits 2 with the field named; a choice of values is listed after the description."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        [kind] = [k for k in typing.get_args(kind) if k is not types.NoneType]  # int | None -> int
    choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else ()
    help_text = field.description or ""
    if choices:
        help_text += f" One of: {', '.join(choices)}."
    option = typer.Option(help=help_text.strip() or None)
    return Annotated[cast(Any, str if choices else kind) | None, option]


def rsa_flags(params: type[BaseModel]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command one option per knob of ``params`` (:func:`mrsa.params.knobs`: ``--population``,
    ``--temperature``…) in place of its keyword-only ``overrides`` parameter, which then receives the
    flags given, nested for :func:`mrsa.params.resolve_params` (unset ones left out).

    typer reads a command's ``inspect.signature``, so the wrapper carries the rewritten one.
    """
    flags = {name: _flag(field) for name, field in knobs(params).items()}

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(command, eval_str=True)  # typer needs types, not strings
        given = list(signature.parameters.values())
        at = next((i for i, p in enumerate(given) if p.name == "overrides" and p.kind is KEYWORD_ONLY), None)
        if at is None:
            raise TypeError(f"{command.__name__}: rsa_flags needs a keyword-only parameter 'overrides'")
        added = [Parameter(name, KEYWORD_ONLY, default=None, annotation=a) for name, a in flags.items()]
        parameters = [*given[:at], *added, *given[at + 1 :]]

        @functools.wraps(command)
        def with_flags(*args: Any, **kwargs: Any) -> R:
            values = {name: kwargs.pop(name, None) for name in flags}
            return command(*args, overrides=nest_overrides(values, params), **kwargs)

        with_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_flags.__annotations__ = {
            **{p.name: p.annotation for p in parameters},
            "return": signature.return_annotation,
        }
        return with_flags

    return decorate


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
    str | None,
    typer.Option(
        "--redis",
        help="Redis URL of the job store and queue: redis://, rediss:// or redis+sentinel://HOST:PORT,.../MASTER/DB (env MRSA_REDIS_URL).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


PricesOpt = Annotated[
    Path | None,
    typer.Option(
        "--prices",
        help="Price table (TOML or JSON, per million prompt / cached-prompt / decode tokens by model id; "
        "env MRSA_PRICES_FILE): results show their cost.",
    ),
]

GpusOpt = Annotated[
    int | None,
    typer.Option(
        "--gpus",
        min=1,
        help="GPUs serving the model (as you state it; mrsa cannot see them): the report gives "
        "GPU-hours per question.",
    ),
]
GpuNameOpt = Annotated[
    str | None,
    typer.Option("--gpu-name", help="Their kind, e.g. H100-80GB (shown beside GPU-hours)."),
]
