"""A deterministic fake ``Backend`` for unit tests and failure injection (never the network).

* Tokenizer: a regex tokenizer that keeps whitespace as tokens (``\\s+``, word pieces of at most
  four characters, single punctuation marks, ``<think>``/``</think>`` as one token each). Ids come
  from a per-instance vocabulary, so ``detokenize(tokenize(text)) == text`` exactly and token counts
  differ from character and word counts (a test cannot pass by confusing them).
* Outputs are scripted: ``script(request)`` returns the full text the "model" would write. The fake
  cuts it at ``max_tokens`` tokens (finish ``"length"``) or returns it whole (finish ``"stop"``).
* ``split_reasoning``: behave like a server with a reasoning parser. A scripted text containing
  ``</think>`` is split into ``reasoning`` and ``content`` (all reasoning when truncated before
  ``</think>``).
* ``return_token_ids``: return the generated ids (including the ``</think>`` token), as vLLM does.
* ``failures``: ``{call_number: exception}`` (1-based) raised instead of answering that call.
* ``gate``: when set, every call waits for the event before answering (to hold requests in flight).
* ``before_answer``: when set, an async hook awaited with each request before it is answered (to
  hold particular requests in flight).
* Every request is recorded in ``requests`` (and every answer in ``results``).

:class:`Sleeps` is a fake ``sleep`` for retry and back-off tests.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mrsa.backends.base import THINK_CLOSE, BackendInfo, GenerationRequest, GenerationResult
from mrsa.domain import FinishReason

_TOKEN = re.compile(r"</think>|<think>|\s+|\w{1,4}|[^\w\s]")

Script = Callable[[GenerationRequest], str]


def default_script(request: GenerationRequest) -> str:
    """A short answer naming where the request came from, boxed 42."""
    tag = request.tag
    return f"Candidate r{tag.get('round', 0)} i{tag.get('index', 0)} c{tag.get('chunk', 0)}: so \\boxed{{42}}"


class FakeTokenizer:
    """Exact-round-trip regex tokenizer (see the module docstring)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self.tokenize_calls = 0
        self.detokenize_calls = 0

    def pieces(self, text: str) -> list[str]:
        out = _TOKEN.findall(text)
        assert "".join(out) == text, "the fake tokenizer must cover every character"
        return out

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            if piece not in self._ids:
                self._ids[piece] = len(self._pieces)
                self._pieces.append(piece)
            ids.append(self._ids[piece])
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    async def tokenize(self, text: str) -> list[int]:
        self.tokenize_calls += 1
        return self.encode(text)

    async def detokenize(self, ids: list[int]) -> str:
        self.detokenize_calls += 1
        return self.decode(ids)


@dataclass
class Call:
    """One recorded ``generate`` call."""

    number: int
    request: GenerationRequest
    results: list[GenerationResult] | None = None
    error: BaseException | None = None
    cancelled: bool = False


class FakeBackend:
    """Implements :class:`mrsa.backends.base.Backend` from a script."""

    def __init__(
        self,
        script: Script | str | None = None,
        *,
        split_reasoning: bool = False,
        return_token_ids: bool = False,
        supports_prefill: bool = True,
        failures: dict[int, BaseException] | None = None,
        context_length: int | None = None,
        gate: asyncio.Event | None = None,
        capacity: int = 1,
    ) -> None:
        if isinstance(script, str):
            text = script
            self.script: Script = lambda _req: text
        else:
            self.script = script or default_script
        self.split_reasoning = split_reasoning
        self.return_token_ids = return_token_ids
        self._supports_prefill = supports_prefill
        self.failures = dict(failures or {})
        self.context_length = context_length
        self.gate = gate
        self.capacity = capacity
        self.tokenizer = FakeTokenizer()
        self.calls: list[Call] = []
        self.in_flight = 0
        self.started = asyncio.Event()  # set at the first call (to wait for a job to be running)
        self.closed = False
        self.before_answer: Callable[[GenerationRequest], Awaitable[None]] | None = None

    # -- the Backend protocol ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "fake://backend"

    @property
    def supports_prefill(self) -> bool:
        return self._supports_prefill

    @supports_prefill.setter
    def supports_prefill(self, value: bool) -> None:
        self._supports_prefill = value

    async def info(self) -> BackendInfo:
        return BackendInfo(
            kind="fake",
            url=self.url,
            model="fake",
            context_length=self.context_length,
            capacity=self.capacity,
        )

    async def generate(self, request: GenerationRequest) -> list[GenerationResult]:
        call = Call(number=len(self.calls) + 1, request=request.model_copy(deep=True))
        self.calls.append(call)
        self.started.set()
        self.in_flight += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)  # a suspension point, like a real request
            if self.before_answer is not None:
                await self.before_answer(request)
            failure = self.failures.pop(call.number, None)
            if failure is not None:
                call.error = failure
                raise failure
            call.results = [self.answer(request) for _ in range(request.n)]
            return call.results
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            self.in_flight -= 1

    async def tokenize(self, text: str) -> list[int]:
        return await self.tokenizer.tokenize(text)

    async def detokenize(self, ids: list[int]) -> str:
        return await self.tokenizer.detokenize(ids)

    async def health(self) -> bool:
        return not self.closed

    async def aclose(self) -> None:
        self.closed = True

    # -- helpers -----------------------------------------------------------------------------------

    def answer(self, request: GenerationRequest) -> GenerationResult:
        """The result the fake gives for ``request`` (pure apart from growing the vocabulary)."""
        tok = self.tokenizer
        full = self.script(request)
        ids = tok.encode(full)
        finish: FinishReason = "stop"
        if len(ids) > request.max_tokens:
            ids = ids[: request.max_tokens]
            finish = "length"
        text = tok.decode(ids)
        reasoning: str | None = None
        content = text
        if self.split_reasoning and THINK_CLOSE in full:
            head, _, after = text.partition(THINK_CLOSE)
            reasoning, content = head, after  # truncated before </think>: everything is reasoning
        prompt = "".join(m.content for m in request.messages) + (request.prefill or "")
        return GenerationResult(
            content=content,
            reasoning=reasoning,
            token_ids=list(ids) if self.return_token_ids else None,
            finish_reason=finish,
            prompt_tokens=len(tok.encode(prompt)),
            completion_tokens=len(ids),
        )

    @property
    def requests(self) -> list[GenerationRequest]:
        return [c.request for c in self.calls]

    def requests_for(self, **tag: str | int) -> list[GenerationRequest]:
        """Recorded requests whose tag has all of ``tag``'s items."""
        return [r for r in self.requests if all(r.tag.get(k) == v for k, v in tag.items())]

    @property
    def results(self) -> list[GenerationResult]:
        return [res for c in self.calls for res in (c.results or [])]


class Sleeps:
    """A fake ``sleep`` recording the delays it was asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
