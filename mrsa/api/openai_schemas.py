"""The subset of OpenAI's chat-completions wire format the facade speaks, plus the Markovian RSA
parameters as extra body fields (``extra_body`` in the ``openai`` SDK).

Unknown top-level fields are accepted and ignored, as OpenAI-compatible servers do, so SDKs that
send fields this server has no use for (``user``, ``logprobs``…) work unchanged — but not silently:
like vLLM, the server logs them, and names them in the ``X-Mrsa-Ignored-Fields`` response header and
in ``mrsa.ignored_fields`` (a misspelt RSA parameter such as ``populaton`` shows up there).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mrsa.api.schemas import PRESET_DESCRIPTION, optional_field
from mrsa.domain import Vote
from mrsa.params import PRESETS, RSAParams, SamplingParams, Selection, TailSource


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


RSA_FIELDS = (
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
    "seed",
    "prompts",
)


class ChatCompletionRequest(BaseModel):
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
    temperature: float | None = optional_field(SamplingParams, "temperature")
    top_p: float | None = optional_field(SamplingParams, "top_p")
    top_k: int | None = optional_field(SamplingParams, "top_k")
    max_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Taken as `budget` (β) when `budget` is not given."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Same as max_tokens (the newer name)."
    )
    # Markovian RSA parameters (extra body fields).
    preset: str | None = Field(
        None, description=PRESET_DESCRIPTION, json_schema_extra={"enum": [*PRESETS, None]}
    )
    population: int | None = optional_field(RSAParams, "population")
    subset: int | None = optional_field(RSAParams, "subset")
    rounds: int | None = optional_field(RSAParams, "rounds")
    budget: int | None = optional_field(RSAParams, "budget")
    tail: int | None = optional_field(RSAParams, "tail")
    chunk: int | None = optional_field(RSAParams, "chunk")
    carryover: int | None = optional_field(RSAParams, "carryover")
    tail_source: TailSource | None = optional_field(RSAParams, "tail_source")
    selection: Selection | None = optional_field(RSAParams, "selection")
    aggregate_temperature: float | None = optional_field(RSAParams, "aggregate_temperature")
    seed: int | None = optional_field(RSAParams, "seed")
    prompts: str | None = optional_field(RSAParams, "prompts")

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
        out: dict[str, Any] = {k: getattr(self, k) for k in RSA_FIELDS if getattr(self, k) is not None}
        sampling = {
            k: getattr(self, k) for k in ("temperature", "top_p", "top_k") if getattr(self, k) is not None
        }
        if sampling:
            out["sampling"] = sampling
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None and "budget" not in out:
            out["budget"] = max_tokens
        return out


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
