"""The subset of OpenAI's chat-completions wire format the facade speaks, plus the Markovian RSA
parameters as extra body fields (``extra_body`` in the ``openai`` SDK).

Unknown top-level fields are accepted and ignored, as OpenAI-compatible servers do, so SDKs that
send fields this server has no use for (``user``, ``logprobs``…) work unchanged — but not silently:
like vLLM, the server logs them, and names them in the ``X-Mrsa-Ignored-Fields`` response header and
in ``mrsa.ignored_fields`` (a misspelt RSA parameter such as ``populaton`` shows up there).

The RSA fields are :class:`~mrsa.params.RSAParams`' knobs, flat (:func:`mrsa.params.knobs`: the
sampling group's ``temperature``, ``top_p`` and ``top_k`` are OpenAI's own fields), each optional with
the same description and bounds (:func:`chat_request_model`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from mrsa.api.schemas import PRESET_DESCRIPTION, optional_field
from mrsa.domain import Vote
from mrsa.params import PRESETS, RSAParams, knobs, nest_overrides


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
    """A chat completion answered by Markovian RSA on the last user message. Unknown top-level
    fields are ignored and named in the ``X-Mrsa-Ignored-Fields`` header and ``mrsa.ignored_fields``."""

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
        min_length=1, max_length=1000, description="The conversation; its last user message is the problem."
    )
    stream: bool = Field(False, description="Server-sent chunks, with keep-alive comments while RSA runs.")
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="Only 1 is supported.")
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

    def problem(self) -> str:
        """The last user message's text ('' when there is none)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text().strip()
        return ""

    def ignored_fields(self) -> list[str]:
        """The top-level fields this server does not know (and so ignores), sorted."""
        return sorted(self.model_extra or {})

    def overrides(self) -> dict[str, Any]:
        """RSA parameter overrides for :func:`mrsa.params.resolve_params`."""
        model = self.params_model
        out = nest_overrides({k: getattr(self, k) for k in knobs(model)}, model)
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None and "budget" not in out:
            out["budget"] = max_tokens
        return out


def chat_request_model(params: type[BaseModel]) -> type[ChatRequestBase]:
    """:class:`ChatRequestBase` with every knob of ``params`` as an optional extra body field."""
    fields: dict[str, Any] = {name: optional_field(field) for name, field in knobs(params).items()}
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


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens of every request of the job.")
    completion_tokens: int = Field(description="Decode tokens of every candidate (D(q)).")
    total_tokens: int


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


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    mrsa: RsaInfo


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
