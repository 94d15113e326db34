"""OpenAI-compatible backend client covering the dialects of vLLM, SGLang, llama.cpp's
``llama-server`` and llama-cpp-python's ``llama_cpp.server``.

Dialect differences handled here (DESIGN §3):

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
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import httpx

from mrsa.backends.base import (
    BackendError,
    BackendInfo,
    BackendServerError,
    GenerationRequest,
    GenerationResult,
)
from mrsa.backends.http import HttpClient, HttpOptions, with_default_concurrency
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
    if value in (None, "stop", "eos", "word", "stop_sequence", "eos_token", "tool_calls", "matched"):
        return "stop"
    return "stop"


def parse_chat_choice(choice: dict[str, Any], completion_tokens: int | None = None) -> GenerationResult:
    """One ``choices[i]`` of a chat completion, in any of the supported dialects."""
    message = choice.get("message") or {}
    reasoning = message.get("reasoning")
    if reasoning is None:
        reasoning = message.get("reasoning_content")
    token_ids = choice.get("token_ids")
    if token_ids is not None and not isinstance(token_ids, list):
        token_ids = None
    count = len(token_ids) if token_ids is not None else completion_tokens or 0
    if token_ids and choice.get("finish_reason") == "stop" and not isinstance(choice.get("stop_reason"), str):
        # vLLM ends the ids of a stopped generation with the EOS (or stop) token it sampled, whose
        # text is not in the content: keep it in the count (it was decoded), drop it from the ids,
        # so a tail cut from them is the trace's own last tokens, with no "<|im_end|>" in it.
        token_ids = token_ids[:-1]
    return GenerationResult(
        content=message.get("content") or "",
        reasoning=reasoning or None,
        token_ids=token_ids,
        finish_reason=normalise_finish_reason(choice.get("finish_reason")),
        completion_tokens=count,
    )


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
        transport: httpx.AsyncBaseTransport | None = None,
        enable_priority: bool = False,
    ) -> None:
        self._url = url.rstrip("/")
        self.dialect: Dialect = dialect
        self.model = model
        self.context_length = context_length
        self.enable_priority = enable_priority
        opts = with_default_concurrency(options, _DEFAULT_CAPACITY[dialect])
        self.http = HttpClient(self._url, opts, backend_kind=dialect, transport=transport)
        self._info: BackendInfo | None = None
        self._special_prefix: list[int] | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def supports_prefill(self) -> bool:
        return self.dialect in _PREFILL_FLAG or self.dialect == "llamacpp"

    # -- discovery ---------------------------------------------------------------------------------

    async def _model_id(self) -> str | None:
        if self.model is None:
            data = await self.http.request_json("GET", "/v1/models", retries=1, endpoint="models")
            models = data.get("data") or []
            if models:
                self.model = str(models[0].get("id"))
                if self.context_length is None:
                    length = models[0].get("max_model_len") or models[0].get("meta", {}).get("n_ctx_train")
                    if isinstance(length, int):
                        self.context_length = length
        return self.model

    async def info(self) -> BackendInfo:
        if self._info is not None:
            return self._info
        await self._model_id()
        capacity = self.http.options.concurrency
        version: str | None = None
        if self.dialect == "llamacpp":
            props = await self.http.request_json("GET", "/props", retries=1, endpoint="props")
            settings = props.get("default_generation_settings") or {}
            n_ctx = settings.get("n_ctx") or props.get("n_ctx")
            if self.context_length is None and isinstance(n_ctx, int):
                self.context_length = n_ctx
            slots = props.get("total_slots")
            if isinstance(slots, int) and slots > 0:
                capacity = slots
                self.http.set_concurrency(slots)
            version = props.get("build_info")
        elif self.dialect in ("vllm", "sglang"):
            try:
                data = await self.http.request_json("GET", "/version", retries=0, endpoint="version")
                version = str(data.get("version")) if isinstance(data, dict) else None
            except BackendError:
                version = None
        self._info = BackendInfo(
            kind=self.dialect,
            url=self._url,
            model=self.model,
            context_length=self.context_length,
            capacity=capacity,
            version=version,
        )
        return self._info

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
        if self.model is not None:
            body["model"] = self.model
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
        await self._model_id()
        body = self.chat_body(request, n)
        data = await self.http.request_json("POST", "/v1/chat/completions", body, endpoint="chat")
        if not isinstance(data, dict) or "choices" not in data:
            message = data.get("error") if isinstance(data, dict) else data
            raise BackendServerError(f"{self._url}: unexpected chat completion reply: {message!r}"[:500])
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
        total_completion = int(usage.get("completion_tokens") or 0)
        per_choice = total_completion if len(choices) == 1 else None
        results = [parse_chat_choice(c, per_choice) for c in choices]
        if per_choice is None and results and all(r.token_ids is None for r in results):
            # n > 1 without ids: split the aggregate count evenly (best effort for accounting).
            share = total_completion // len(results)
            results = [r.model_copy(update={"completion_tokens": share}) for r in results]
        return [r.model_copy(update={"prompt_tokens": prompt_tokens}) for r in results]

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
        data = await self.http.request_json("POST", "/extras/tokenize", {"input": text}, endpoint="tokenize")
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise BackendServerError(f"{self._url}: tokenize reply has no token list: {data!r}"[:300])
        return [int(t) for t in tokens]

    async def tokenize(self, text: str) -> list[int]:
        if self.dialect == "llama-cpp-python":
            # /extras/tokenize adds BOS where the GGUF asks for it and has no switch to turn that
            # off: learn the prefix it adds to the empty string once, and strip it.
            if self._special_prefix is None:
                self._special_prefix = await self._raw_tokenize("")
            ids = await self._raw_tokenize(text)
            prefix = self._special_prefix
            return ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids
        if self.dialect == "llamacpp":
            data = await self.http.request_json(
                "POST", "/tokenize", {"content": text, "add_special": False}, endpoint="tokenize"
            )
        else:
            body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
            if await self._model_id() is not None:
                body["model"] = self.model
            data = await self.http.request_json("POST", "/tokenize", body, endpoint="tokenize")
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise BackendServerError(f"{self._url}: tokenize reply has no token list: {data!r}"[:300])
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    async def detokenize(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self.dialect == "llama-cpp-python":
            data = await self.http.request_json(
                "POST", "/extras/detokenize", {"tokens": ids}, endpoint="detokenize"
            )
        elif self.dialect == "llamacpp":
            data = await self.http.request_json("POST", "/detokenize", {"tokens": ids}, endpoint="detokenize")
        else:
            body: dict[str, Any] = {"tokens": ids}
            if self.dialect == "sglang":
                body["skip_special_tokens"] = False  # SGLang's default drops them (vLLM keeps them)
            if await self._model_id() is not None:
                body["model"] = self.model
            data = await self.http.request_json("POST", "/detokenize", body, endpoint="detokenize")
        if isinstance(data, dict):
            for key in ("text", "prompt", "content"):
                if isinstance(data.get(key), str):
                    return str(data[key])
        raise BackendServerError(f"{self._url}: detokenize reply has no text: {data!r}"[:300])

    async def aclose(self) -> None:
        await self.http.aclose()
