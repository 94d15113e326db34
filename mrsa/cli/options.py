"""Command-line flags shared by several commands.

One definition per flag keeps names, defaults and help texts from drifting apart between ``solve``,
``submit``, ``bench``, ``serve`` and ``worker``. The Markovian RSA flags are not written here at
all but derived from :class:`~mrsa.params.RSAParams`' fields (:func:`rsa_flags`), and the flags of
settings from the settings' fields (:func:`setting_flags`: flag, type, help and environment
variable), so a command's parameter is named after the field it sets (see
:func:`mrsa.cli.common.settings_from_flags`).
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
from rich.markup import escape

from mrsa.env import env_name
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


# -- settings (solve, bench, serve, worker, the client commands) ----------------------------------


def setting_option(model: type[BaseModel], name: str) -> Any:
    """The ``typer.Option`` of one setting: its flag (the field's ``flag``, else ``--name``) and help
    (its description and environment variable). The value is checked by the settings model, so a
    bad one exits 2 naming the flag (:func:`mrsa.cli.common.settings_from_flags`)."""
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = str(extra.get("flag") or "--" + name.replace("_", "-"))
    # Parentheses, not brackets: typer renders help as rich markup, where "[env …]" would vanish.
    help_text = f"{(field.description or '').rstrip('.')} (env {env_name(name)})."
    if field.default is not None and not isinstance(field.default, bool) and field.default != "":
        help_text += f" Default: {field.default}."
    return typer.Option(flag, help=escape(help_text), show_default=False)


def _setting_annotation(model: type[BaseModel], name: str) -> Any:
    kind = model.model_fields[name].annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        [kind] = [k for k in typing.get_args(kind) if k is not types.NoneType]  # int | None -> int
    return Annotated[cast(Any, kind) | None, setting_option(model, name)]


def setting_flags(model: type[BaseModel], *names: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command one option per named setting of ``model``, generated from the field (type,
    flag, description, environment variable): one definition per setting, as :func:`rsa_flags`
    does for the knobs. The command takes ``ctx: typer.Context`` and reads them from
    ``ctx.params`` (:func:`mrsa.cli.common.settings_from_flags`); unset ones are ``None``, so the
    environment and the defaults apply."""
    flags = {name: _setting_annotation(model, name) for name in names}

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(command, eval_str=True)  # typer needs types, not strings
        given = list(signature.parameters.values())
        if "ctx" not in signature.parameters:
            raise TypeError(f"{command.__name__}: setting_flags needs a 'ctx: typer.Context' parameter")
        added = [Parameter(name, KEYWORD_ONLY, default=None, annotation=a) for name, a in flags.items()]
        parameters = [*given, *added]

        @functools.wraps(command)
        def with_flags(*args: Any, **kwargs: Any) -> R:
            for name in flags:
                kwargs.pop(name, None)
            return command(*args, **kwargs)

        with_flags.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_flags.__annotations__ = {
            **{p.name: p.annotation for p in parameters},
            "return": signature.return_annotation,
        }
        return with_flags

    return decorate


# The backend settings every command that runs Markovian RSA takes; each adds its own.
BACKEND_FLAGS = (
    "backend_url",
    "backend_kind",
    "model",
    "tokenizer",
    "backend_concurrency",
    "backend_timeout_s",
    "backend_retries",
    "backend_priority",
    "backend_routing_header",
)

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


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
