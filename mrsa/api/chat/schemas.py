"""The subset of OpenAI's chat-completions wire format the facade speaks, plus the Markovian RSA
parameters as extra body fields (``extra_body`` in the ``openai`` SDK).

Unknown top-level fields are accepted and ignored, as OpenAI-compatible servers do, so SDKs that
send fields this server has no use for (``user``, ``logprobs``…) work unchanged — but not silently:
like vLLM, the server logs them, and names them in the ``X-Mrsa-Ignored-Fields`` response header and
in ``mrsa.ignored_fields`` (a misspelt RSA parameter such as ``populaton`` shows up there).

The RSA fields are :class:`~mrsa.params.RSAParams`' knobs, flat (:func:`mrsa.params.knobs`: the
sampling group's ``temperature``, ``top_p`` and ``top_k`` are OpenAI's own fields), each optional with
the same description and bounds (:func:`chat_request_model`), and Zyphra's RSA proxy fields and
aliases (:mod:`mrsa.api.chat.proxy_fields`), in the body or in its ``rsa`` object. Which requests run RSA
at all and which are passed through to the backend is :mod:`mrsa.api.chat.passthrough`'s decision.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from mrsa.api.chat.proxy_fields import (
    BY_NAME,
    PROXY_FIELDS,
    RESPONSE_DEFAULTS,
    ProxyFieldConflict,
    fold_aliases,
    proxy_overrides,
)
from mrsa.api.schemas import PRESET_DESCRIPTION, optional_field
from mrsa.domain import Cost, Vote
from mrsa.engine.prompts import conversation_problem
from mrsa.params import DEFAULT_PRESET, PRESETS, RSAParams, knobs, nest_overrides


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are read."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type == "text" and p.text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequestBase(BaseModel):
    """A chat completion answered by Markovian RSA on the conversation (its system prompt, earlier
    turns and last user message). Unknown top-level fields are ignored and named in the
    ``X-Mrsa-Ignored-Fields`` header and ``mrsa.ignored_fields``."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "Zyphra/ZAYA1-8B",
                    "messages": [{"role": "user", "content": "What is 7*6?"}],
                    "preset": "smoke",
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=256, description="Model id, recorded on the job.")
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=1000,
        description="The conversation: everything up to its last user message is the problem's context.",
    )
    stream: bool = Field(False, description="Server-sent chunks, with keep-alive comments while RSA runs.")
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="1 runs RSA; a request with n > 1 is passed through.")
    max_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Taken as `budget` (β) when `budget` is not given."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Same as max_tokens (the newer name)."
    )
    # Markovian RSA parameters (extra body fields): the preset here, the knobs of ``params_model``
    # added by chat_request_model.
    params_model: ClassVar[type[BaseModel]] = RSAParams
    preset: str | None = Field(
        None, description=PRESET_DESCRIPTION, json_schema_extra={"enum": [*PRESETS, None]}
    )
    rsa: bool | dict[str, Any] | None = Field(
        None,
        description="Zyphra's per-request form: an object of RSA fields (the proxy's names or ours), "
        "`true` for RSA with the defaults, `false` to pass the request through to the backend.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flatten_rsa_object(cls, data: Any) -> Any:
        """``"rsa": {...}`` holds fields that could be top-level ones; a field given both ways with
        different values is an error naming it."""
        if not isinstance(data, dict) or not isinstance(data.get("rsa"), dict):
            return data
        out = {**data, "rsa": True}
        for key, value in data["rsa"].items():
            if key in data and data[key] != value:
                raise ValueError(
                    f"{key}: rsa.{key}={value!r} conflicts with the top-level {key}={data[key]!r}"
                )
            out[key] = value
        return out

    def problem(self) -> str:
        """The conversation as one problem text (:func:`~mrsa.engine.prompts.conversation_problem`);
        '' when it has no user message with text."""
        return conversation_problem([(m.role, m.text()) for m in self.messages])

    def proxy_values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The proxy fields given, by canonical name, and the name each came under."""
        return fold_aliases({name: getattr(self, name, None) for name in BY_NAME})

    def response_flag(self, name: str) -> bool:
        """``return_aggregation_prompt`` / ``return_rsa_metadata``, under any of their names."""
        return bool(self.proxy_values()[0].get(name, RESPONSE_DEFAULTS[name]))

    def ignored_fields(self) -> list[str]:
        """The top-level fields this server does not know (and so ignores), sorted."""
        return sorted(self.model_extra or {})

    def overrides(self) -> dict[str, Any]:
        """RSA parameter overrides for :func:`mrsa.params.resolve_params`: our knobs, the proxy's
        fields mapped onto them, and ``max_tokens``. Raises :class:`ProxyFieldConflict` (its message
        starts with the field's name) when two fields set one knob to different values."""
        model = self.params_model
        flat = {k: v for k in knobs(model) if (v := getattr(self, k)) is not None}
        explicit = set(flat)
        folded, sent_as = self.proxy_values()
        if "summary_prompt" in folded:
            raise ProxyFieldConflict(
                f"{sent_as['summary_prompt']}: not supported; summary prompts are versioned templates of "
                "the prompt set (`prompts`)"
            )
        setter: dict[str, str] = {}
        for name, value in folded.items():
            for knob, mapped in proxy_overrides({name: value}).items():
                if mapped is None:
                    continue
                if knob in flat and flat[knob] != mapped and setter.get(knob) != sent_as[name]:
                    other = setter.get(knob, knob)
                    raise ProxyFieldConflict(
                        f"{sent_as[name]}: sets {knob}={mapped!r}, but {other} sets it to {flat[knob]!r}"
                    )
                flat[knob] = mapped
                setter[knob] = sent_as[name]
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            # The proxy bounds every stage but the last by short_resp_len and the last by max_tokens.
            target = "final_budget" if "short_resp_len" in folded else "budget"
            flat.setdefault(target, max_tokens)
        self._fit_tail(flat, explicit, folded, sent_as)
        return nest_overrides(flat, model)

    def _preset_value(self, name: str) -> Any:
        preset = PRESETS.get(self.preset or DEFAULT_PRESET, {})
        return preset.get(name, self.params_model.model_fields[name].default)

    def _fit_tail(
        self, flat: dict[str, Any], explicit: set[str], folded: dict[str, Any], sent_as: dict[str, str]
    ) -> None:
        """τ from ``rsa_tail_window``; an unset τ larger than β (a chat's small ``max_tokens`` under
        the preset's τ) is cut to β rather than refused."""
        budget = flat.get("budget", self._preset_value("budget"))
        window = folded.get("rsa_tail_window")
        if window is not None and "rsa_summarize" in folded and window and folded["rsa_summarize"]:
            raise ProxyFieldConflict(
                f"{sent_as['rsa_tail_window']}: a tail window needs {sent_as['rsa_summarize']}=false "
                "(summaries replace the tail)"
            )
        if window is False:
            if "tail" in flat:
                raise ProxyFieldConflict(
                    f"{sent_as['rsa_tail_window']}: false carries whole candidates (τ = β), so the tail "
                    "cannot be set too"
                )
            flat["tail"] = budget
        elif "tail" not in flat and "tail" not in explicit and self._preset_value("tail") > budget:
            flat["tail"] = budget


def chat_request_model(params: type[BaseModel]) -> type[ChatRequestBase]:
    """:class:`ChatRequestBase` with every knob of ``params`` as an optional extra body field."""
    fields: dict[str, Any] = {name: optional_field(field) for name, field in knobs(params).items()}
    for proxy in PROXY_FIELDS:  # Zyphra's proxy fields, where a knob does not already have the name
        for name in proxy.names:
            alias = f" (alias of `{proxy.name}`)" if name != proxy.name else ""
            description = f"Zyphra RSA proxy field{alias}: {proxy.ours}"
            fields.setdefault(name, (proxy.value_type | None, Field(None, description=description)))
    request = create_model(
        "ChatCompletionRequest", __base__=ChatRequestBase, __doc__=ChatRequestBase.__doc__, **fields
    )
    request.params_model = params
    return request


if TYPE_CHECKING:  # a model built at run time is no type to mypy: it checks the base's methods
    ChatCompletionRequest = ChatRequestBase
else:
    ChatCompletionRequest = chat_request_model(RSAParams)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(
        0, description="Of prompt_tokens, those the server served from its prefix cache."
    )


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens of every request of the job.")
    completion_tokens: int = Field(description="Decode tokens of every candidate (D(q)).")
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class RsaInfo(BaseModel):
    """What Markovian RSA did, next to the OpenAI fields (clients that do not know it ignore it)."""

    job_id: str
    answer: str | None
    votes: list[Vote]
    rounds: int = Field(description="Generation stages run (T+1).")
    requests: int
    warnings: list[str] = Field(
        default_factory=list, description="What could not be checked when the job was accepted."
    )
    ignored_fields: list[str] = Field(
        default_factory=list, description="Top-level request fields this server ignored."
    )
    cost: Cost | None = Field(None, description="Money spent, when the server has a price table.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    mrsa: RsaInfo
    rsa_metadata: dict[str, Any] | None = Field(
        None, description="Zyphra proxy's metadata (`return_rsa_metadata`, on unless set false)."
    )
    aggregation_prompt: list[dict[str, str]] | None = Field(
        None, description="The first last-stage aggregation prompt's messages (`return_aggregation_prompt`)."
    )

    def wire(self) -> dict[str, Any]:
        """The JSON body: the proxy's optional fields only when asked for."""
        unset = {name for name in ("rsa_metadata", "aggregation_prompt") if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
