"""``--trace DIR``: every generation request and response as one JSONL record."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mrsa.backends.base import Backend, BackendError, BackendInfo, GenerationRequest, GenerationResult


class TracingBackend:
    """Wraps a backend and appends a record per ``generate`` call to ``DIR/requests.jsonl``."""

    def __init__(self, inner: Backend, directory: Path) -> None:
        self.inner = inner
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "requests.jsonl"
        self._file = self.path.open("a", encoding="utf-8")

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def supports_prefill(self) -> bool:
        return self.inner.supports_prefill

    async def info(self) -> BackendInfo:
        return await self.inner.info()

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
        started = time.time()
        record: dict[str, Any] = {
            "at": started,
            "backend": self.inner.url,
            **{k: v for k, v in request.tag.items()},
            "request": request.model_dump(exclude={"tag"}),
        }
        try:
            results = await self.inner.generate(request)
        except BackendError as exc:
            record["error"] = str(exc)
            record["elapsed_s"] = round(time.time() - started, 4)
            self._write(record)
            raise
        record["elapsed_s"] = round(time.time() - started, 4)
        record["responses"] = [
            {
                "content": r.content,
                "reasoning": r.reasoning,
                "finish_reason": r.finish_reason,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "token_ids": r.token_ids,
            }
            for r in results
        ]
        self._write(record)
        return results

    async def tokenize(self, text: str) -> list[int]:
        return await self.inner.tokenize(text)

    async def detokenize(self, ids: list[int]) -> str:
        return await self.inner.detokenize(ids)

    async def health(self) -> bool:
        return await self.inner.health()

    async def aclose(self) -> None:
        self._file.close()
        await self.inner.aclose()
