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
model's tokenizer locally (``--tokenizer``: ``tokenizer.json``, or the folder holding it and
``tokenizer_config.json``; for the bundled model, served by ``mrsa backend --kind triton``, the one
built from its GGUF is found by the model's name). The chat template from there renders the messages
(``add_generation_prompt=True``); an assistant prefill is appended raw, so prefill is supported.
The server has no ``n``: ``n > 1`` is fanned out as separate requests with consecutive seeds.

``tokenizers`` and ``jinja2`` come with the optional extra ``triton`` and are imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import importlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx

from mrsa.backends.base import (
    THINK_CLOSE,
    BackendError,
    BackendInfo,
    BackendRequestError,
    BackendServerError,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
)
from mrsa.backends.bundled_triton import BUNDLED_MODEL, ensure_tokenizer, to_stderr
from mrsa.backends.http import (
    _CONTEXT_PATTERNS,
    HttpClient,
    HttpOptions,
    _error_text,
    with_default_concurrency,
)
from mrsa.backends.openai import normalise_finish_reason
from mrsa.domain import FinishReason

_DEFAULT_CAPACITY = 256
# A ``model_max_length`` above this is the transformers "no limit" sentinel, not a context size.
_MAX_PLAUSIBLE_CONTEXT = 1 << 24
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


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendRequestError(
            f"the Triton backend needs the Python package {name!r} to tokenize and render the chat "
            f"template locally: pip install 'mrsa[triton]'"
        ) from exc


def _token_text(value: Any) -> str | None:
    """A special token from ``tokenizer_config.json``: a string or an ``AddedToken`` object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


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
    where = f"HTTP {status}: " if status is not None else ""
    if _CONTEXT_PATTERNS.search(message):
        return ContextOverflowError(
            f"{url}: the prompt plus the requested tokens do not fit the model's context window "
            f"({where}{message}). Lower budget/chunk, tail or subset, or serve a longer context.",
            url=url,
        )
    if status == 429 or _TRANSIENT_PATTERNS.search(message):
        return BackendServerError(f"{url} reported a transient error ({where}{message})", url=url)
    if status == 404 or _REQUEST_PATTERNS.search(message) or (status is not None and status < 500):
        return BackendRequestError(f"{url} rejected the request ({where}{message})", url=url)
    return BackendServerError(f"{url} reported an error ({where}{message})", url=url)


def classify_triton(response: httpx.Response, url: str) -> BackendError:
    """:class:`HttpClient`'s error reading for Triton (see the module docstring)."""
    return triton_error(_error_text(response), url, response.status_code)


class LocalTokenizer:
    """The served model's tokenizer and chat template, loaded from disk.

    ``path`` is ``tokenizer.json`` or a folder holding it. The chat template is read from
    ``tokenizer_config.json`` (``chat_template``; a list of named templates picks ``default``) or,
    for newer models, ``chat_template.jinja`` next to it.
    """

    def __init__(self, path: Path) -> None:
        tokenizers = _import("tokenizers")
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise BackendRequestError(
                f"--tokenizer {path}: no tokenizer.json there (give the file or the model folder holding it)"
            )
        self.path = file
        try:
            self._tok: Any = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise BackendRequestError(f"--tokenizer {file}: cannot load it: {exc}") from exc
        folder = file.parent
        config: dict[str, Any] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            try:
                loaded = json.loads(config_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise BackendRequestError(f"{config_file}: not valid JSON: {exc}") from exc
            if isinstance(loaded, dict):
                config = loaded
        self.chat_template = self._find_template(config, folder)
        self.special_tokens: dict[str, str] = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            text = _token_text(config.get(name))
            if text is not None:
                self.special_tokens[name] = text
        length = config.get("model_max_length")
        self.model_max_length = (
            int(length) if isinstance(length, int | float) and 0 < length <= _MAX_PLAUSIBLE_CONTEXT else None
        )
        self._template: Any = None
        self._adds_bos = self._check_adds_bos()

    @staticmethod
    def _find_template(config: dict[str, Any], folder: Path) -> str | None:
        template = config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str):
            return template
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        json_file = folder / "chat_template.json"
        if json_file.is_file():
            try:
                data = json.loads(json_file.read_text(encoding="utf-8"))
            except ValueError:
                return None
            if isinstance(data, dict) and isinstance(data.get("chat_template"), str):
                return str(data["chat_template"])
        return None

    def _check_adds_bos(self) -> bool:
        """Whether the server's tokenizer (vLLM encodes ``text_input`` with special tokens) puts the
        BOS token in front by itself, in which case a BOS rendered by the template is doubled."""
        bos = self.special_tokens.get("bos_token")
        if bos is None:
            return False
        bos_id = self._tok.token_to_id(bos)
        if bos_id is None:
            return False
        ids: list[int] = self._tok.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == bos_id

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids

    def count_prompt(self, text: str) -> int:
        """Tokens the server sees for ``text_input`` (it adds special tokens)."""
        return len(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=False)
        return text

    def render(self, messages: list[dict[str, str]], prefill: str | None) -> str:
        """The prompt text: the chat template with ``add_generation_prompt=True``, then the prefill."""
        if self.chat_template is None:
            raise BackendRequestError(
                f"{self.path.parent}: no chat template (neither 'chat_template' in tokenizer_config.json "
                f"nor chat_template.jinja); Triton's generate endpoint takes raw text, so one is needed"
            )
        jinja2 = _import("jinja2")
        if self._template is None:
            self._template = _compile_template(jinja2, self.chat_template)
        try:
            text: str = self._template.render(
                messages=messages,
                add_generation_prompt=True,
                tools=None,
                documents=None,
                **self.special_tokens,
            )
        except jinja2.TemplateError as exc:
            raise BackendRequestError(f"chat template of {self.path.parent} failed: {exc}") from exc
        bos = self.special_tokens.get("bos_token")
        if bos and self._adds_bos and text.startswith(bos):
            text = text[len(bos) :]
        return text + (prefill or "")


def _compile_template(jinja2: ModuleType, source: str) -> Any:
    """Compile a Hugging Face chat template the way ``transformers`` does (sandboxed, trimmed)."""
    sandbox = importlib.import_module("jinja2.sandbox")
    ext = importlib.import_module("jinja2.ext")

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)

    def strftime_now(fmt: str) -> str:
        return _dt.datetime.now().strftime(fmt)

    env = sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise BackendRequestError(f"the chat template does not compile: {exc}") from exc


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
        transport: httpx.AsyncBaseTransport | None = None,
        context_length: int | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self.model = model
        self.tokenizer = LocalTokenizer(tokenizer) if tokenizer is not None else None
        self._looked_for_bundled = tokenizer is not None
        self.context_length = context_length  # else the model config's, else the tokenizer's (info)
        opts = with_default_concurrency(options, _DEFAULT_CAPACITY)
        self.http = HttpClient(
            self._url, opts, backend_kind="triton", transport=transport, classify=classify_triton
        )
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
        """Without ``--tokenizer``: the bundled model's own, when that is the model served (built
        offline from its GGUF the first time, in a thread: that may take a minute)."""
        if self._looked_for_bundled:
            return
        model = self.model
        if model is None:
            with contextlib.suppress(BackendRequestError):  # no model to tell: the error says --tokenizer
                model = await self._model_name()
        self._looked_for_bundled = True
        if model != BUNDLED_MODEL:
            return
        self.tokenizer = LocalTokenizer(await asyncio.to_thread(ensure_tokenizer, to_stderr))

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
