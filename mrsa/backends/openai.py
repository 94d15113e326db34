"""OpenAI-compatible backend client covering the dialects of vLLM, SGLang, llama.cpp's
``llama-server`` and llama-cpp-python's ``llama_cpp.server``.

Dialect differences handled here (docs/design.md#backends):

========================  ============  ==========================  =====================  ==========
dialect                   ``n``         tokenize / detokenize       token ids returned     prefill
========================  ============  ==========================  =====================  ==========
vllm                      yes           /tokenize, /detokenize      ``return_token_ids``   continue_final_message
sglang                    yes           /tokenize, /detokenize      no                     continue_final_message
llamacpp (llama-server)   fan out       /tokenize, /detokenize      no                     assistant prefill
llama-cpp-python          fan out       /extras/(de)tokenize        no                     no (new turn)
========================  ============  ==========================  =====================  ==========

Reasoning arrives as ``message.reasoning`` (vLLM ≥ 0.10) or ``message.reasoning_content`` (older vLLM,
SGLang, llama-server); both are read.

Replies are validated before use: a reply without choices, with choices of the wrong shape or
count, negative token counts or token lists that are not token ids is a
:class:`~mrsa.backends.base.MalformedReplyError` naming the field (retried: it may be one garbled
reply), never an ``IndexError`` deep in the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, NonNegativeInt, ValidationError, field_validator

from mrsa.backends.base import (
    BackendError,
    BackendInfo,
    BackendServerError,
    GenerationRequest,
    GenerationResult,
    MalformedReplyError,
)
from mrsa.backends.http import HttpClient, HttpOptions, backend_base_url, with_default_concurrency
from mrsa.backends.wire import Wire
from mrsa.domain import FinishReason

Dialect = Literal["vllm", "sglang", "llamacpp", "llama-cpp-python"]
DIALECTS: tuple[Dialect, ...] = ("vllm", "sglang", "llamacpp", "llama-cpp-python")

_NATIVE_N = {"vllm", "sglang"}
_PREFILL_FLAG = {"vllm", "sglang"}  # continue_final_message / add_generation_prompt=false
_DEFAULT_CAPACITY: dict[str, int] = {"vllm": 256, "sglang": 256, "llamacpp": 4, "llama-cpp-python": 1}


def normalise_finish_reason(value: Any) -> FinishReason:
    """Map a server's finish reason (string or SGLang's ``{"type": ...}``) onto ours."""
    if isinstance(value, dict):
        value = value.get("type")
    if value in ("length", "limit", "max_tokens"):
        return "length"
    if value in ("abort", "cancelled"):
        return "abort"
    return "stop"  # "stop", "eos", "stop_sequence", "tool_calls", None… and any reason we do not know


class _ReplyMessage(BaseModel):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class _ReplyChoice(BaseModel):
    index: NonNegativeInt = 0
    message: _ReplyMessage = Field(default_factory=_ReplyMessage)
    finish_reason: str | dict[str, Any] | None = None
    token_ids: list[NonNegativeInt] | None = None
    stop_reason: Any = None  # vLLM: the stop string, or the stop token id (None = EOS); not validated

    @field_validator("message", mode="before")
    @classmethod
    def _null_message(cls, value: object) -> object:
        return {} if value is None else value


class _PromptTokensDetails(BaseModel):
    cached_tokens: NonNegativeInt | None = None


class _ReplyUsage(BaseModel):
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None
    prompt_tokens_details: _PromptTokensDetails | None = None


class _ChatReply(BaseModel):
    """The part of an OpenAI chat completion the engine reads, as the servers send it."""

    choices: list[_ReplyChoice] = Field(min_length=1)
    usage: _ReplyUsage | None = None


def _first_problem(exc: ValidationError) -> str:
    """The first validation error as ``field.path: message`` (and how many more there are)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "reply"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first['msg']}{more}"[:300]


def _result(
    choice: _ReplyChoice, completion_tokens: int | None, prompt_tokens: int = 0, cached_prompt_tokens: int = 0
) -> GenerationResult:
    message = choice.message
    reasoning = message.reasoning if message.reasoning is not None else message.reasoning_content
    token_ids = choice.token_ids
    count = len(token_ids) if token_ids is not None else completion_tokens or 0
    if token_ids and choice.finish_reason == "stop" and not isinstance(choice.stop_reason, str):
        # vLLM ends the ids of a stopped generation with the EOS (or stop) token it sampled, whose
        # text is not in the content: keep it in the count (it was decoded), drop it from the ids,
        # so a tail cut from them is the trace's own last tokens, with no "<|im_end|>" in it.
        token_ids = token_ids[:-1]
    # Every field was validated in _ReplyChoice: construct without validating the token ids again.
    return GenerationResult.model_construct(
        content=message.content or "",
        reasoning=reasoning or None,
        token_ids=token_ids,
        finish_reason=normalise_finish_reason(choice.finish_reason),
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=cached_prompt_tokens,
        completion_tokens=count,
    )


def parse_chat_reply(data: Any, url: str, n: int) -> list[GenerationResult]:
    """The ``n`` choices of a chat completion body, normalised (usage spread over the choices).

    An error reported inside a 200 body is a :class:`BackendServerError` with its message; any
    other reply that is not a chat completion of ``n`` choices is a :class:`MalformedReplyError`."""
    if not isinstance(data, dict) or "choices" not in data:
        message = data.get("error", data.get("message", data)) if isinstance(data, dict) else data
        raise BackendServerError(f"{url}: unexpected chat completion reply: {message!r}"[:500], url=url)
    try:
        reply = _ChatReply.model_validate(data)
    except ValidationError as exc:
        raise MalformedReplyError(
            f"{url}: malformed chat completion reply: {_first_problem(exc)}", url=url
        ) from exc
    if len(reply.choices) != n:
        raise MalformedReplyError(
            f"{url}: malformed chat completion reply: asked for {n} choice(s), got {len(reply.choices)}",
            url=url,
        )
    usage = reply.usage or _ReplyUsage()
    prompt_tokens = usage.prompt_tokens or 0
    details = usage.prompt_tokens_details
    cached = min(prompt_tokens, details.cached_tokens or 0) if details is not None else 0
    total_completion = usage.completion_tokens or 0
    choices = sorted(reply.choices, key=lambda c: c.index)
    per_choice = total_completion if len(choices) == 1 else None
    if per_choice is None and all(c.token_ids is None for c in choices):
        # n > 1 without ids: split the aggregate count evenly (best effort for accounting).
        per_choice = total_completion // len(choices)
    return [_result(c, per_choice, prompt_tokens, cached) for c in choices]


def _token_list(url: str) -> Callable[[Any], list[int]]:
    """A parser of a tokenize reply: ``tokens`` as ids (or llama-server's ``{"id": …}`` pieces)."""

    def parse(data: Any) -> list[int]:
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if isinstance(tokens, list):
            ids = [t.get("id") if isinstance(t, dict) else t for t in tokens]
            valid = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
            if len(valid) == len(ids):
                return valid
        raise MalformedReplyError(f"{url}: tokenize reply has no list of token ids: {data!r}"[:300], url=url)

    return parse


def _detokenized_text(url: str) -> Callable[[Any], str]:
    def parse(data: Any) -> str:
        if isinstance(data, dict):
            for key in ("text", "prompt", "content"):
                if isinstance(data.get(key), str):
                    return str(data[key])
        raise MalformedReplyError(f"{url}: detokenize reply has no text: {data!r}"[:300], url=url)

    return parse


def _object(url: str, what: str) -> Callable[[Any], dict[str, Any]]:
    def parse(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise MalformedReplyError(f"{url}: {what} reply is not a JSON object: {data!r}"[:300], url=url)
        return data

    return parse


class OpenAICompatibleBackend:
    """A client for one OpenAI-compatible inference server (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        dialect: Dialect,
        model: str | None = None,
        options: HttpOptions | None = None,
        context_length: int | None = None,
        wire: Wire | None = None,
        enable_priority: bool = False,
    ) -> None:
        self._url = backend_base_url(url)
        self.dialect: Dialect = dialect
        self.model = model
        self.context_length = context_length
        self.enable_priority = enable_priority
        opts = with_default_concurrency(options, _DEFAULT_CAPACITY[dialect])
        self.http = HttpClient(self._url, opts, backend_kind=dialect, wire=wire)
        self._info: BackendInfo | None = None
        self._special_prefix: list[int] | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def supports_prefill(self) -> bool:
        return self.dialect in _PREFILL_FLAG or self.dialect == "llamacpp"

    # -- discovery ---------------------------------------------------------------------------------

    async def _models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries; a reply that lists something other than model objects is a
        :class:`MalformedReplyError` (retried as a transient fault)."""
        data = await self.http.request_json(
            "GET", "/v1/models", retries=1, endpoint="models", parse=_object(self._url, "models")
        )
        models = data.get("data") or []
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models
        ):
            raise MalformedReplyError(
                f"{self._url}: models reply lists no model id: {data!r}"[:300], url=self._url
            )
        return models

    def _context_from(self, entry: dict[str, Any]) -> None:
        """The context a ``/v1/models`` entry reports (vLLM and mrsa's embedded server:
        ``max_model_len``; llama-server: ``meta.n_ctx_train``), unless one is set already."""
        meta = entry.get("meta")
        length = entry.get("max_model_len") or (meta.get("n_ctx_train") if isinstance(meta, dict) else None)
        if (
            self.context_length is None
            and isinstance(length, int)
            and not isinstance(length, bool)
            and length > 0
        ):
            self.context_length = length

    async def _model_id(self) -> str | None:
        if self.model is None:
            models = await self._models()
            first = models[0] if models else None
            if first is not None and isinstance(first.get("id"), str):
                self.model = first["id"]
                self._context_from(first)
        return self.model

    async def info(self) -> BackendInfo:
        if self._info is not None:
            return self._info
        await self._model_id()
        complete = True
        if self.context_length is None and self.dialect != "llamacpp":  # llama-server: /props below
            # The model id was given, so /v1/models was not read: find the model's entry (else the
            # first) for the context it reports. Best effort — a worker given its kind and model
            # starts without the server — and not cached when it failed, so it is asked again.
            try:
                models = await self._models()
            except BackendError:
                models, complete = [], False
            entry = next((m for m in models if m.get("id") == self.model), models[0] if models else None)
            if entry is not None:
                self._context_from(entry)
        capacity = self.http.options.concurrency
        version: str | None = None
        if self.dialect == "llamacpp":
            props = await self.http.request_json(
                "GET", "/props", retries=1, endpoint="props", parse=_object(self._url, "props")
            )
            settings = props.get("default_generation_settings")
            n_ctx = (settings.get("n_ctx") if isinstance(settings, dict) else None) or props.get("n_ctx")
            if self.context_length is None and isinstance(n_ctx, int) and n_ctx > 0:
                self.context_length = n_ctx
            slots = props.get("total_slots")
            if isinstance(slots, int) and 0 < slots <= 4096:
                capacity = slots
                self.http.set_concurrency(slots)
            build = props.get("build_info")
            version = str(build)[:100] if build is not None else None
        elif self.dialect in ("vllm", "sglang"):
            try:
                data = await self.http.request_json("GET", "/version", retries=0, endpoint="version")
                version = str(data.get("version"))[:100] if isinstance(data, dict) else None
            except BackendError:
                version = None
        info = BackendInfo(
            kind=self.dialect,
            url=self._url,
            model=self.model,
            context_length=self.context_length,
            capacity=capacity,
            version=version,
        )
        if complete:
            self._info = info
        return info

    async def health(self) -> bool:
        path = "/v1/models" if self.dialect == "llama-cpp-python" else "/health"
        try:
            await self.http.request_json("GET", path, retries=0, timeout_s=5.0, endpoint="health")
        except BackendError:
            return False
        return True

    # -- generation --------------------------------------------------------------------------------

    def chat_body(self, request: GenerationRequest, n: int) -> dict[str, Any]:
        """The JSON body of a chat completion for this dialect."""
        messages = [m.model_dump() for m in request.messages]
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": False,
        }
        model = request.model or self.model
        if model is not None:
            body["model"] = model
        if request.top_k > 0 or self.dialect != "llama-cpp-python":
            body["top_k"] = request.top_k
        if request.seed is not None:
            body["seed"] = request.seed
        if n > 1:
            body["n"] = n
        if request.prefill:
            messages.append({"role": "assistant", "content": request.prefill})
            if self.dialect in _PREFILL_FLAG:
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
        if self.dialect == "vllm":
            body["return_token_ids"] = True
            body["skip_special_tokens"] = False
            if request.priority is not None and self.enable_priority:
                body["priority"] = request.priority
        return body

    async def _chat(self, request: GenerationRequest, n: int) -> list[GenerationResult]:
        if request.model is None:
            await self._model_id()
        body = self.chat_body(request, n)
        read_s, deadline_s = self.http.options.generation_timeouts(request.max_tokens)
        results: list[GenerationResult] = await self.http.request_json(
            "POST",
            "/v1/chat/completions",
            body,
            timeout_s=read_s,
            deadline_s=deadline_s,
            endpoint="chat",
            parse=lambda data: parse_chat_reply(data, self._url, n),
            lineage=request.lineage,
        )
        return results

    async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
        if request.n <= 1 or self.dialect in _NATIVE_N:
            return await self._chat(request, max(1, request.n))
        # No `n` on this server: fan out n single requests with distinct seeds.
        singles = [
            request.model_copy(update={"n": 1, "seed": None if request.seed is None else request.seed + i})
            for i in range(request.n)
        ]
        parts = await asyncio.gather(*(self._chat(s, 1) for s in singles))
        return [r for part in parts for r in part]

    # -- tokenizer ---------------------------------------------------------------------------------

    async def _raw_tokenize(self, text: str) -> list[int]:
        ids: list[int] = await self.http.request_json(
            "POST",
            "/extras/tokenize",
            {"input": text},
            endpoint="tokenize",
            parse=_token_list(self._url),
        )
        return ids

    async def tokenize(self, text: str) -> list[int]:
        if self.dialect == "llama-cpp-python":
            # /extras/tokenize adds BOS where the GGUF asks for it and has no switch to turn that
            # off: learn the prefix it adds to the empty string once, and strip it.
            if self._special_prefix is None:
                self._special_prefix = await self._raw_tokenize("")
            raw = await self._raw_tokenize(text)
            prefix = self._special_prefix
            return raw[len(prefix) :] if prefix and raw[: len(prefix)] == prefix else raw
        parse = _token_list(self._url)
        if self.dialect == "llamacpp":
            body: dict[str, Any] = {"content": text, "add_special": False}
        else:
            body = {"prompt": text, "add_special_tokens": False}
            if await self._model_id() is not None:
                body["model"] = self.model
        ids: list[int] = await self.http.request_json(
            "POST", "/tokenize", body, endpoint="tokenize", parse=parse
        )
        return ids

    async def detokenize(self, ids: list[int]) -> str:
        if not ids:
            return ""
        path = "/extras/detokenize" if self.dialect == "llama-cpp-python" else "/detokenize"
        body: dict[str, Any] = {"tokens": ids}
        if self.dialect in ("vllm", "sglang"):
            if self.dialect == "sglang":
                body["skip_special_tokens"] = False  # SGLang's default drops them (vLLM keeps them)
            if await self._model_id() is not None:
                body["model"] = self.model
        text: str = await self.http.request_json(
            "POST", path, body, endpoint="detokenize", parse=_detokenized_text(self._url)
        )
        return text

    async def aclose(self) -> None:
        await self.http.aclose()
