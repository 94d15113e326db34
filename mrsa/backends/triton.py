"""Triton Inference Server client: the KServe v2 *generate extension* with Triton's vLLM backend.

Wire format (``POST /v2/models/{model}/generate``)::

    {"text_input": "<rendered chat prompt>",
     "sampling_parameters": "{\\"max_tokens\\": 512, \\"temperature\\": 1.0, ...}",   # a JSON *string*
     "exclude_input_in_output": true,
     "return_finish_reason": true, "return_num_input_tokens": true, "return_num_output_tokens": true}

Top-level keys that name a model input become input tensors (the vLLM backend declares all of the
above); ``sampling_parameters`` is a ``TYPE_STRING`` tensor the backend ``json.loads``, and it takes
precedence over the request ``parameters`` object. The reply carries one value per output tensor,
a scalar when the tensor has one element and a list otherwise::

    {"model_name": "m", "model_version": "1", "text_output": "...", "finish_reason": "length",
     "num_input_tokens": 12, "num_output_tokens": 16}

Failures come as ``{"error": "..."}``. Measured on a real tritonserver (2.51, PyTriton 0.7.0): a
model's error is HTTP **400** whatever error code the model gave it, malformed JSON or a wrongly
typed field is HTTP 500, an unknown model HTTP 404; an error may also arrive inside an HTTP 200. So
the status says little: :func:`classify_triton` reads the message — a context overflow is final,
a transient condition (out of memory, busy, timeout, "try again", unavailable, a dead engine) is
retried, anything else is a final error quoting the server.

Triton has no tokenizer endpoint and ``text_input`` is raw text, so this client needs the served
model's tokenizer locally (:mod:`mrsa.backends.triton_prompt`; ``--tokenizer``: ``tokenizer.json``,
or the folder holding it and ``tokenizer_config.json``; for the bundled model, served by
``mrsa backend --kind triton``, the one built from its GGUF is found by the model's name: the
runtime hands the client a ``find_tokenizer`` from :mod:`mrsa.servers`, so no client imports a launcher). The chat
template from there renders the messages (``add_generation_prompt=True``); an assistant prefill is
appended raw, so prefill is supported. The server has no ``n``: ``n > 1`` is fanned out as separate
requests with consecutive seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mrsa.backends.base import (
    THINK_CLOSE,
    BackendError,
    BackendInfo,
    BackendRequestError,
    BackendServerError,
    GenerationRequest,
    GenerationResult,
)
from mrsa.backends.bundled import BUNDLED_MODEL
from mrsa.backends.http import (
    HttpClient,
    HttpOptions,
    backend_base_url,
    context_overflow,
    error_text,
    with_default_concurrency,
)
from mrsa.backends.openai import normalise_finish_reason
from mrsa.backends.triton_prompt import LocalTokenizer
from mrsa.backends.wire import Wire
from mrsa.domain import FinishReason

_DEFAULT_CAPACITY = 256

# The served model's name (None: the server named none) → its tokenizer's path, or None if unknown.
TokenizerFinder = Callable[[str | None], Path | None]
# A condition that passes: answered differently if the same request is sent again later.
_TRANSIENT_PATTERNS = re.compile(
    r"out of memory|\bOOM\b|busy|try again|retry|timed? ?out|timeout|deadline|temporar|unavailable|"
    r"not ready|overloaded|too many requests|resource exhausted|engine (loop|is dead|dead|core)|"
    r"EngineDead|unhealthy|not healthy|stub process|shutting down|cancelled|canceled",
    re.IGNORECASE,
)
# An error message naming a problem with the request itself (answered the same way every time).
_REQUEST_PATTERNS = re.compile(
    r"invalid|unknown (model|input|parameter|argument)|not found|unsupported|not supported|must be|"
    r"\bexpected|missing|parse|bad request|no such|wrong type",
    re.IGNORECASE,
)


def _first(value: Any) -> Any:
    """The value of a one-element output tensor (a scalar, or a list when the shape is [-1])."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _as_int(value: Any) -> int | None:
    value = _first(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def triton_error(message: str, url: str, status: int | None = None) -> BackendError:
    """An error reply of Triton (``status`` None: inside an HTTP 200), classified by its words."""
    overflow = context_overflow(message, url, status)
    if overflow is not None:
        return overflow
    where = f"HTTP {status}: " if status is not None else ""
    if status == 429 or _TRANSIENT_PATTERNS.search(message):
        return BackendServerError(f"{url} reported a transient error ({where}{message})", url=url)
    if status == 404 or _REQUEST_PATTERNS.search(message) or (status is not None and status < 500):
        return BackendRequestError(f"{url} rejected the request ({where}{message})", url=url)
    return BackendServerError(f"{url} reported an error ({where}{message})", url=url)


def classify_triton(status: int, body: bytes, url: str) -> BackendError:
    """:class:`HttpClient`'s error reading for Triton (see the module docstring)."""
    return triton_error(error_text(body), url, status)


def _split_reasoning(text: str, finish: FinishReason) -> tuple[str | None, str]:
    """(reasoning, content) split at the last ``</think>``, only when :attr:`GenerationResult.trace`
    gives back exactly ``text`` (the raw text is what tails and Delethink carry-over are cut from)."""
    head, sep, after = text.rpartition(THINK_CLOSE)
    if not sep or not head or not (after or finish == "stop"):
        return None, text
    return head, after


class TritonBackend:
    """A client for one model served by Triton's vLLM backend (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        tokenizer: Path | None = None,
        options: HttpOptions | None = None,
        wire: Wire | None = None,
        context_length: int | None = None,
        find_tokenizer: TokenizerFinder | None = None,
    ) -> None:
        self._url = backend_base_url(url)
        self._find_bundled = find_tokenizer
        self.model = model
        self.tokenizer = LocalTokenizer(tokenizer) if tokenizer is not None else None
        self._looked_for_bundled = tokenizer is not None or find_tokenizer is None
        self.context_length = context_length  # else the model config's, else the tokenizer's (info)
        opts = with_default_concurrency(options, _DEFAULT_CAPACITY)
        self.http = HttpClient(self._url, opts, backend_kind="triton", wire=wire, classify=classify_triton)
        self._info: BackendInfo | None = None

    @property
    def url(self) -> str:
        return self._url

    @property
    def supports_prefill(self) -> bool:
        return True

    # -- discovery ---------------------------------------------------------------------------------

    async def _model_name(self) -> str:
        """The configured model, else the only ready model the server shows (see :meth:`ready_models`)."""
        if self.model is not None:
            return self.model
        names = await self.ready_models()
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise BackendRequestError(
                f"{self._url}: Triton serves {len(names)} ready models ({found}) that mrsa can list "
                f"(the repository index and statistics may be forbidden, as under PyTriton); pass --model",
                url=self._url,
            )
        self.model = names[0]
        return self.model

    async def _listed(
        self, method: str, path: str, body: dict[str, Any] | None, key: str | None
    ) -> list[str]:
        """Model names from a listing endpoint ([] when it is forbidden, missing or empty)."""
        try:
            data = await self.http.request_json(method, path, body, retries=1, endpoint="models")
        except BackendRequestError:  # 403 (restricted, as under PyTriton), 404
            return []
        entries = data.get(key) if key is not None and isinstance(data, dict) else data
        return sorted(
            {
                str(m["name"])
                for m in (entries if isinstance(entries, list) else [])
                if isinstance(m, dict) and m.get("name") and m.get("state", "READY") == "READY"
            }
        )

    async def ready_models(self) -> list[str]:
        """The ready models: the repository index, else (empty ``[]`` or 403, as PyTriton answers)
        the statistics of the loaded models, else the bundled model if it is ready."""
        names = await self._listed("POST", "/v2/repository/index", {"ready": True}, None)
        if not names:
            names = await self._listed("GET", "/v2/models/stats", None, "model_stats")
        if not names and await self._ready(BUNDLED_MODEL):
            names = [BUNDLED_MODEL]
        return names

    async def _ready(self, model: str) -> bool:
        try:
            await self.http.request_json(
                "GET", f"{self._model_path(model)}/ready", retries=0, timeout_s=5.0, endpoint="health"
            )
        except BackendRequestError:
            return False
        return True

    def _model_path(self, model: str) -> str:
        return f"/v2/models/{quote(model, safe='')}"

    async def info(self) -> BackendInfo:
        if self._info is not None:
            return self._info
        model = await self._model_name()
        meta = await self.http.request_json("GET", self._model_path(model), retries=1, endpoint="metadata")
        inputs = meta.get("inputs") if isinstance(meta, dict) else None
        if isinstance(inputs, list) and inputs:
            names = {i.get("name") for i in inputs if isinstance(i, dict)}
            if "text_input" not in names:
                raise BackendRequestError(
                    f"{self._url}: model {model!r} has no 'text_input' input ({', '.join(map(str, names))}); "
                    f"the generate endpoint needs an LLM model such as one served by the vLLM backend",
                    url=self._url,
                )
        if self.context_length is None:
            self.context_length = await self._configured_context(model)
        if self.context_length is None:
            await self._find_tokenizer()
            if self.tokenizer is not None:
                self.context_length = self.tokenizer.model_max_length
        version: str | None = None
        try:
            server = await self.http.request_json("GET", "/v2", retries=0, endpoint="server")
            if isinstance(server, dict) and server.get("version") is not None:
                version = str(server["version"])
        except BackendError:
            version = None
        self._info = BackendInfo(
            kind="triton",
            url=self._url,
            model=model,
            context_length=self.context_length,
            capacity=self.http.options.concurrency,
            version=version,
        )
        return self._info

    async def _configured_context(self, model: str) -> int | None:
        """The context the model's config declares in a ``max_model_len`` or ``n_ctx`` parameter
        (the bundled model does; the vLLM backend keeps it in model.json, which Triton does not show)."""
        try:
            config = await self.http.request_json(
                "GET", f"{self._model_path(model)}/config", retries=0, endpoint="metadata"
            )
        except BackendError:
            return None
        params = config.get("parameters") if isinstance(config, dict) else None
        if not isinstance(params, dict):
            return None
        for key in ("max_model_len", "n_ctx"):
            entry = params.get(key)
            value = entry.get("string_value") if isinstance(entry, dict) else None
            if isinstance(value, str) and value.isdigit() and int(value) > 0:
                return int(value)
        return None

    async def health(self) -> bool:
        """Server ready (``/v2/health/ready``, an empty 200) and, when known, the model ready."""
        try:
            await self.http.request_json(
                "GET", "/v2/health/ready", retries=0, timeout_s=5.0, endpoint="health"
            )
            if self.model is not None:
                await self.http.request_json(
                    "GET",
                    f"{self._model_path(self.model)}/ready",
                    retries=0,
                    timeout_s=5.0,
                    endpoint="health",
                )
        except BackendError:
            return False
        return True

    # -- generation --------------------------------------------------------------------------------

    async def _find_tokenizer(self) -> None:
        """Without ``--tokenizer``: ask ``find_tokenizer`` (the runtime's: the bundled model's own,
        when that is the model served) for a path, in a thread (a first build may take a minute)."""
        if self._looked_for_bundled or self._find_bundled is None:
            return
        model = self.model
        if model is None:
            with contextlib.suppress(BackendRequestError):  # no model to tell: the error says --tokenizer
                model = await self._model_name()
        self._looked_for_bundled = True
        found = await asyncio.to_thread(self._find_bundled, model)
        if found is not None:
            self.tokenizer = LocalTokenizer(found)

    def _require_tokenizer(self, what: str) -> LocalTokenizer:
        if self.tokenizer is None:
            raise BackendRequestError(
                f"{self._url}: Triton has no tokenizer or chat-template endpoint, so {what} needs the served "
                f"model's tokenizer locally: pass --tokenizer PATH (its tokenizer.json, or the model folder "
                f"holding tokenizer.json and tokenizer_config.json)",
                url=self._url,
            )
        return self.tokenizer

    def prompt_text(self, request: GenerationRequest) -> str:
        """The ``text_input`` of a request: rendered messages plus the raw prefill."""
        tokenizer = self._require_tokenizer("rendering the chat messages")
        return tokenizer.render([m.model_dump() for m in request.messages], request.prefill)

    def generate_body(self, prompt: str, request: GenerationRequest, seed: int | None) -> dict[str, Any]:
        """The JSON body of one generate call (one choice)."""
        sampling: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "skip_special_tokens": False,
        }
        if request.top_k > 0:
            sampling["top_k"] = request.top_k
        if seed is not None:
            sampling["seed"] = seed
        return {
            "text_input": prompt,
            "sampling_parameters": json.dumps(sampling),
            "exclude_input_in_output": True,
            "return_finish_reason": True,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
        }

    def parse_reply(self, data: Any, prompt: str, request: GenerationRequest) -> GenerationResult:
        """One generate reply → one result (errors inside an HTTP 200 body are raised)."""
        url = f"{self._url}{self._model_path(self.model or '')}/generate"
        if not isinstance(data, dict):
            raise BackendServerError(f"{url}: unexpected generate reply: {data!r}"[:500], url=url)
        if data.get("error") is not None:
            error = data["error"]
            if isinstance(error, dict):
                error = error.get("message", error)
            raise triton_error(str(error)[:500], url)
        text = _first(data.get("text_output"))
        if not isinstance(text, str):
            raise BackendServerError(f"{url}: generate reply has no text_output: {data!r}"[:500], url=url)
        if prompt and text.startswith(prompt):  # a server that ignored exclude_input_in_output
            text = text[len(prompt) :]
        completion = _as_int(data.get("num_output_tokens"))
        if completion is None:
            completion = len(self.tokenizer.encode(text)) if self.tokenizer is not None else 0
        prompt_tokens = _as_int(data.get("num_input_tokens"))
        if prompt_tokens is None:
            prompt_tokens = self.tokenizer.count_prompt(prompt) if self.tokenizer is not None else 0
        raw_finish = _first(data.get("finish_reason"))
        finish: FinishReason
        if raw_finish in (None, "None", ""):
            # An older vLLM backend without return_finish_reason: infer it from the token count.
            finish = "length" if completion >= request.max_tokens else "stop"
        else:
            finish = normalise_finish_reason(raw_finish)
        reasoning, content = _split_reasoning(text, finish)
        return GenerationResult(
            content=content,
            reasoning=reasoning,
            token_ids=None,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
        )

    async def _generate_one(
        self, prompt: str, request: GenerationRequest, seed: int | None
    ) -> GenerationResult:
        model = await self._model_name()
        body = self.generate_body(prompt, request, seed)
        read_s, deadline_s = self.http.options.generation_timeouts(request.max_tokens)
        # Parsed inside the retry loop: an error Triton reports under HTTP 200 is classified (and
        # retried when transient) like one it reports as a 400.
        result: GenerationResult = await self.http.request_json(
            "POST",
            f"{self._model_path(model)}/generate",
            body,
            timeout_s=read_s,
            deadline_s=deadline_s,
            endpoint="generate",
            parse=lambda data: self.parse_reply(data, prompt, request),
            lineage=request.lineage,
        )
        return result

    async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
        await self._find_tokenizer()
        prompt = self.prompt_text(request)
        n = max(1, request.n)
        seeds = [None if request.seed is None else request.seed + i for i in range(n)]
        return list(await asyncio.gather(*(self._generate_one(prompt, request, s) for s in seeds)))

    # -- tokenizer ---------------------------------------------------------------------------------

    async def tokenize(self, text: str) -> list[int]:
        await self._find_tokenizer()
        return self._require_tokenizer("tokenize").encode(text)

    async def detokenize(self, ids: list[int]) -> str:
        if not ids:
            return ""
        await self._find_tokenizer()
        return self._require_tokenizer("detokenize").decode(ids)

    async def aclose(self) -> None:
        await self.http.aclose()
