"""One source for the RSA parameters: the CLI's flags (``mrsa solve``, ``mrsa submit``), the REST
API's overrides and the chat request's extra fields are ``RSAParams``' fields, with the same
descriptions and limits — and a knob added to ``RSAParams`` appears on every surface by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import typer
from pydantic import BaseModel
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from mrsa.api.app import create_app
from mrsa.cli import app
from mrsa.cli.settings import Settings
from mrsa.params import RSAParams, knobs, nest_overrides

COMMANDS = ("solve", "submit")
SCHEMA_NOTES = ("title", "description", "default")  # what is not a limit


def components() -> dict[str, Any]:
    return dict(create_app(Settings()).openapi()["components"]["schemas"])


def non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The value's own schema: the non-null branch of ``X | None``, without title/description/default."""
    branches = [b for b in schema.get("anyOf", [schema]) if b != {"type": "null"}]
    assert len(branches) == 1, schema
    return {k: v for k, v in branches[0].items() if k not in SCHEMA_NOTES}


def flat_properties(schemas: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """A component's properties by flat knob name: a nested model's (``sampling``) in its place."""
    out: dict[str, dict[str, Any]] = {}
    for key, prop in schemas[name]["properties"].items():
        ref = non_null(prop).get("$ref")
        if ref is None:
            out[key] = prop
        else:
            out.update(flat_properties(schemas, ref.rsplit("/", 1)[-1]))
    return out


def cli_options(command: str) -> dict[str, TyperOption]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return {p.name: p for p in group.commands[command].params if isinstance(p, TyperOption) and p.name}


def test_knobs_are_the_fields_with_groups_flattened() -> None:
    expected: list[str] = []
    for name, field in RSAParams.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            expected += list(group.model_fields)
        else:
            expected.append(name)
    assert list(knobs(RSAParams)) == expected
    assert {"temperature", "top_p", "top_k"} <= set(expected) and "sampling" not in expected
    flat = {"population": 3, "top_k": 5, "chunk": None, "temperature": None}
    assert nest_overrides(flat, RSAParams) == {"population": 3, "sampling": {"top_k": 5}}
    assert nest_overrides({}, RSAParams) == {}


def test_rest_and_chat_fields_are_the_knobs_with_the_same_descriptions_and_limits() -> None:
    schemas = components()
    rsa = flat_properties(schemas, "RSAParams")
    rest = flat_properties(schemas, "ParamOverrides")
    chat_all = schemas["ChatCompletionRequest"]["properties"]
    chat = {name: chat_all[name] for name in rsa}  # a missing knob fails here
    assert list(rsa) == list(knobs(RSAParams))
    assert list(rest) == list(rsa)
    for surface in (rest, chat):
        for name, prop in rsa.items():
            assert surface[name]["description"] == prop["description"], name
            assert non_null(surface[name]) == non_null(prop), name  # ge/le/gt, enum, pattern
            assert {"type": "null"} in surface[name]["anyOf"], name  # unset keeps the preset's value
    for name in ("ParamOverrides", "SamplingOverrides", "ChatCompletionRequest"):
        assert not set(schemas[name].get("required", [])) & set(rsa), name
    # The limits really are in the schema (not an empty comparison).
    assert non_null(rest["population"]) == {"type": "integer", "minimum": 1, "maximum": 512}
    assert non_null(chat["top_p"])["exclusiveMinimum"] == 0
    assert non_null(rest["tail_source"])["enum"] == ["trace", "reasoning", "answer_or_tail"]


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_flags_are_the_knobs_with_the_same_descriptions(command: str) -> None:
    rsa = flat_properties(components(), "RSAParams")
    options = cli_options(command)
    names = list(options)
    at = names.index("population")
    assert names[at : at + len(rsa)] == list(rsa)  # all of them, in field order, nothing between
    for name, prop in rsa.items():
        option = options[name]
        assert option.opts == [f"--{name.replace('_', '-')}"]
        choices = f" One of: {', '.join(prop['enum'])}." if "enum" in prop else ""  # shown in --help
        assert option.help == prop["description"] + choices, name
        assert option.default is None, name  # unset keeps the preset's value
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output
    assert "One of: trace, reasoning, answer_or_tail." in help_text


def beyond_the_limits(prop: dict[str, Any]) -> list[str]:
    """Values just outside a knob's schema limits (or not among its choices), as flag text."""
    value = non_null(prop)
    step = 1 if value.get("type") == "integer" else 0.5
    out = []
    if "minimum" in value:
        out.append(str(value["minimum"] - step))
    if "exclusiveMinimum" in value:
        out.append(str(value["exclusiveMinimum"]))
    if "maximum" in value:
        out.append(str(value["maximum"] + step))
    if "enum" in value or "pattern" in value:
        out.append("../nope")
    return out


CASES = [
    (name, bad)
    for name, prop in flat_properties(components(), "RSAParams").items()
    for bad in beyond_the_limits(prop)
]


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_flags_have_the_same_limits(command: str) -> None:
    """Each value just outside a limit is refused before anything runs: exit 2 naming the field."""
    assert len(CASES) > 20
    runner = CliRunner()
    for name, bad in CASES:
        result = runner.invoke(app, [command, f"--{name.replace('_', '-')}", bad, "x"])
        assert result.exit_code == 2, (name, bad, result.output)
        assert name in result.output and "Traceback" not in result.output, (name, bad, result.output)


# -- "done when": one edit to RSAParams reaches every surface ----------------------------------------

EXTENDED = textwrap.dedent(
    """
    import json, sys
    from typing import Any
    from pydantic import Field
    import mrsa.params as params

    class SamplingParams(params.SamplingParams):
        min_p: float = Field(0.0, ge=0.0, le=1.0, description="Hypothetical: min-p cut-off.")

    class RSAParams(params.RSAParams):
        warmup: int = Field(0, ge=0, le=8, description="Hypothetical: warm-up rounds.")
        sampling: SamplingParams = Field(default_factory=SamplingParams)

    # The one edit, made before anything reads the class (as editing mrsa/params.py would be).
    params.SamplingParams, params.RSAParams = SamplingParams, RSAParams

    from pydantic import ValidationError
    from typer.testing import CliRunner
    import mrsa.cli.jobs_cmd
    from mrsa.api.app import create_app
    from mrsa.api.chat.schemas import ChatCompletionRequest
    from mrsa.api.jobs.schemas import JobRequest, SubmitResponse
    from mrsa.cli import app
    from mrsa.cli.settings import Settings

    sent: list[dict[str, Any]] = []

    class RecordingClient:  # what `mrsa submit` sends, instead of a running API
        def __init__(self, url: str, key: str | None) -> None: ...
        def close(self) -> None: ...
        def submit(self, body: dict[str, Any], key: str | None) -> SubmitResponse:
            sent.append(body)
            links = {"job": "j", "result": "r", "events": "e", "cancel": "c"}
            return SubmitResponse(id="job-1", status="queued", links=links)

    mrsa.cli.jobs_cmd.ApiClient = RecordingClient
    runner = CliRunner()
    flags = ["--warmup", "3", "--min-p", "0.25", "--population", "4", "--subset", "2"]
    submitted = runner.invoke(app, ["submit", *flags, "--api", "http://127.0.0.1:9", "x"])
    refused = runner.invoke(app, ["solve", "--warmup", "9", "x"])
    request = JobRequest.model_validate(sent[0])
    resolved = params.resolve_params(request.preset, request.params.as_dict())
    chat = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "x"}], warmup=2, min_p=0.5
    )
    refusals = []
    for model, body in (
        (JobRequest, {"problem": "x", "params": {"warmup": 99}}),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "min_p": 2}),
    ):
        try:
            model.model_validate(body)
        except ValidationError as exc:  # what the routes answer with a 422 naming the field
            refusals.append([list(e["loc"]) for e in exc.errors()])
    api = create_app(Settings())
    json.dump({
        "solve_help": runner.invoke(app, ["solve", "--help"]).output,
        "submit_help": runner.invoke(app, ["submit", "--help"]).output,
        "submitted": [submitted.exit_code, submitted.output, sent],
        "refused": [refused.exit_code, refused.output],
        "resolved": resolved.model_dump(),
        "chat": [chat.overrides(), chat.ignored_fields()],
        "refusals": refusals,
        "openapi": api.openapi()["components"]["schemas"],
    }, sys.stdout)
    """
)


def test_a_knob_added_to_rsaparams_appears_on_every_surface() -> None:
    """A fresh interpreter where ``RSAParams`` has one knob more (and ``sampling`` one more): the
    flags, the REST schema and the chat fields have them, and their values reach the job's params."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRSA_")}
    env["COLUMNS"] = "250"
    proc = subprocess.run(
        [sys.executable, "-c", EXTENDED], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    for command in ("solve_help", "submit_help"):
        assert "--warmup" in seen[command] and "Hypothetical: warm-up rounds." in seen[command]
        assert "--min-p" in seen[command] and "Hypothetical: min-p cut-off." in seen[command]
    code, output, sent = seen["submitted"]
    assert code == 0, output
    assert sent[0]["params"] == {"population": 4, "subset": 2, "warmup": 3, "sampling": {"min_p": 0.25}}
    assert (seen["resolved"]["warmup"], seen["resolved"]["sampling"]["min_p"]) == (3, 0.25)
    code, output = seen["refused"]
    assert code == 2 and "warmup" in output, output
    overrides, ignored = seen["chat"]
    assert overrides == {"warmup": 2, "sampling": {"min_p": 0.5}} and ignored == []
    assert seen["refusals"] == [[["params", "warmup"]], [["min_p"]]]
    schemas = seen["openapi"]
    rest = schemas["ParamOverrides"]["properties"]["warmup"]
    assert rest["description"] == "Hypothetical: warm-up rounds."
    assert non_null(rest) == {"type": "integer", "minimum": 0, "maximum": 8}
    assert non_null(schemas["SamplingOverrides"]["properties"]["min_p"])["maximum"] == 1
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["warmup"]["description"] == "Hypothetical: warm-up rounds." and "min_p" in chat
    assert "warmup" in schemas["RSAParams"]["properties"]
