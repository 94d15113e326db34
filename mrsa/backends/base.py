"""The ``Backend`` protocol: what the engine needs from an inference server, and its errors."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

from mrsa.domain import FinishReason

THINK_CLOSE = "</think>"


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    """One generation. ``prefill`` is text the assistant turn starts with (a raw continuation)."""

    messages: list[Message]
    prefill: str | None = Field(None, description="Assistant text to continue from (Delethink carry-over).")
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    n: int = 1
    priority: int | None = Field(None, description="vLLM request priority (lower runs first) when enabled.")
    model: str | None = Field(
        None, description="Model id to ask the server for (the job's); None = the backend's default."
    )
    tag: dict[str, str | int] = Field(
        default_factory=dict, description="Where the request comes from (job, round, index, chunk); not sent."
    )
    lineage: str | None = Field(
        None,
        description="The candidate's lineage key (the same for all its chunks); sent as the routing "
        "header when one is configured, never in the body.",
    )


class GenerationResult(BaseModel):
    """One choice of a generation, normalised across server dialects."""

    content: str
    reasoning: str | None = None
    token_ids: list[int] | None = Field(None, description="Generated token ids when the server returns them.")
    finish_reason: FinishReason
    prompt_tokens: int = 0
    cached_prompt_tokens: int = Field(0, description="Of prompt_tokens, those served from the prefix cache.")
    completion_tokens: int = 0

    @property
    def trace(self) -> str:
        """The raw trace as the model wrote it: reasoning, ``</think>`` (when the model closed its
        reasoning: it wrote an answer or stopped), then the answer."""
        if self.reasoning:
            closed = bool(self.content) or self.finish_reason == "stop"
            return f"{self.reasoning}{THINK_CLOSE if closed else ''}{self.content}"
        return self.content


class BackendInfo(BaseModel):
    """What a backend reports about itself (shown in manifests and ``mrsa backend``)."""

    kind: str
    url: str
    model: str | None = None
    context_length: int | None = None
    capacity: int = 1
    version: str | None = None


class BackendError(Exception):
    """Base class of backend failures. ``retryable`` tells the client whether to try again;
    ``outage`` that the server is down, restarting or saturated rather than rejecting this request,
    so a worker holds the task and tries again later instead of failing its job."""

    retryable = False
    outage = False
    kind = "backend"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class BackendUnavailable(BackendError):
    """Could not reach the server (connection refused, DNS, timeouts) after retries."""

    retryable = True
    outage = True
    kind = "unavailable"


class BackendServerError(BackendError):
    """5xx or 429 from the server, or an error reported inside a 200 body."""

    retryable = True
    kind = "server"


class BackendBusy(BackendServerError):
    """429, 502, 503 or 504: the server (or the proxy in front of it) cannot take requests now —
    overloaded, loading or restarting. Not this request's fault: an outage."""

    outage = True


class MalformedReplyError(BackendServerError):
    """A 2xx reply that is not what the protocol promises (not JSON, no choices, negative counts…).
    Retried: a proxy or a server under stress can garble one reply."""

    kind = "malformed"


class ReplyTooLargeError(BackendError):
    """A reply body above the size limit: final (the same request gets the same reply)."""

    kind = "too_large"


class BackendRequestError(BackendError):
    """A 4xx the server will answer the same way every time: final."""

    kind = "request"


class ContextOverflowError(BackendRequestError):
    """The prompt plus the requested tokens do not fit the model's context window."""

    kind = "context_overflow"


class Backend(Protocol):
    """An inference server. One instance per server, shared by all tasks of a process."""

    @property
    def url(self) -> str: ...

    @property
    def supports_prefill(self) -> bool:
        """True when an assistant prefill is continued raw (no new turn is opened)."""
        ...

    async def info(self) -> BackendInfo: ...

    async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
        """``request.n`` choices (fanned out as separate requests where the server has no ``n``)."""
        ...

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        ...

    async def detokenize(self, ids: list[int]) -> str: ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...
