"""The served model's tokenizer and chat template, loaded from disk, for Triton.

Triton has no tokenizer endpoint and its generate extension takes raw text, so the Triton client
(:mod:`mrsa.backends.triton`) tokenizes and renders the chat template locally, as ``transformers``
would: ``tokenizers`` reads ``tokenizer.json``, jinja2 renders the template from
``tokenizer_config.json`` (or ``chat_template.jinja``) in a sandbox.

``tokenizers`` and ``jinja2`` come with the optional extra ``triton`` and are imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from mrsa.backends.base import BackendRequestError

# A ``model_max_length`` above this is the transformers "no limit" sentinel, not a context size.
_MAX_PLAUSIBLE_CONTEXT = 1 << 24


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
