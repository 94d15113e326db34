"""The inference-server model behind the simulator: a character tokenizer, seeded outputs, a block
prefix cache and a continuous-batching scheduler that runs in (scaled) real time.

Continuous batching as vLLM does it: at most ``max_num_seqs`` sequences run; every decode step
advances each running sequence by one token and takes ``step_base_ms + step_per_seq_ms * batch``;
a step that admits new sequences also pays ``prefill_ms_per_token`` for each prompt token the
prefix cache does not hold. Waiting requests are admitted first come, first served, or by
``priority`` (lower first) when priority scheduling is on. Nothing is preempted.

The scheduler does not tick once per step: it sleeps until the next completion (or until an
arrival can take a free slot) and then advances every sequence by the steps that fit. Its model
clock runs on absolute deadlines, so a late wake-up is made up by the next one instead of
accumulating: the simulator costs a few wake-ups per request, not one per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from .script import Scripted

FinishReason = Literal["stop", "length"]

_WORDS = [
    "so",
    "we",
    "consider",
    "the",
    "sum",
    "of",
    "terms",
    "then",
    "check",
    "each",
    "case",
    "again",
    "note",
    "that",
    "this",
    "gives",
    "modulo",
    "factor",
    "prime",
    "square",
    "root",
    "equation",
    "substitute",
    "both",
    "sides",
    "hence",
    "count",
    "pairs",
    "where",
    "value",
    "integer",
    "parity",
    "bound",
    "triangle",
    "angle",
    "area",
    "ratio",
    "digits",
    "remainder",
    "recurrence",
    "base",
]


@dataclass(frozen=True)
class SimConfig:
    """What the simulated server can do and how long it takes. Times are in milliseconds."""

    max_num_seqs: int = 64
    step_base_ms: float = 2.0
    step_per_seq_ms: float = 0.05
    prefill_ms_per_token: float = 0.002
    block_size: int = 16
    cache_blocks: int = 50_000
    max_model_len: int = 32_768
    enable_priority: bool = False
    model: str = "mrsa-sim"
    # Output lengths: a share of runaway generations hit max_tokens; the rest are log-normal.
    median_tokens: int = 160
    length_sigma: float = 0.6
    runaway_share: float = 0.15
    correct_share: float = 0.6
    # A probe for hostile model output: problems whose text contains HOSTILE draw this answer in
    # place of their first ("correct") one, e.g. 9^{9^{9}}. Empty: off.
    hostile_answer: str = ""
    # Count generation requests per value of this request header (a router's affinity key) in
    # /sim/stats ``header_values``, for tests of clients that send one. Empty: off.
    record_header: str = ""
    # Per-problem difficulty (see ``Difficulty``): answers depend on the problem and on the answers
    # an aggregation prompt shows, so aggregation converges on some problems and never on others.
    # Off: every generation is right with ``correct_share``, whatever it was shown.
    difficulty: bool = False
    hard_share: float = 0.25
    # Scripted answers and behaviours per problem (see ``script.py``): a JSONL path. Empty: off.
    answers: str = ""

    def step_s(self, batch: int) -> float:
        """Wall time of one decode step with ``batch`` running sequences."""
        return (self.step_base_ms + self.step_per_seq_ms * batch) / 1000

    @property
    def full_batch_token_s(self) -> float:
        """Time per decoded token when the batch is full: the throughput limit."""
        return self.step_s(self.max_num_seqs) / self.max_num_seqs


# -- tokenizer and chat template -----------------------------------------------------------------


def encode(text: str) -> list[int]:
    """One token per character (its code point): cheap, exact and reversible."""
    return [ord(c) for c in text]


def decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool, continue_final: bool) -> str:
    """A minimal chat template: role headers, and an open assistant turn to generate into."""
    parts: list[str] = []
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if last and continue_final and m.get("role") == "assistant":
            parts.append(f"<|assistant|>\n{m.get('content', '')}")
        else:
            parts.append(f"<|{m.get('role', 'user')}|>\n{m.get('content', '')}<|end|>\n")
    if add_generation_prompt and not continue_final:
        parts.append("<|assistant|>\n")
    return "".join(parts)


# -- seeded outputs ------------------------------------------------------------------------------


EOS_ID = 0  # the end-of-turn token a stopped generation samples last, as a real model does


@dataclass(frozen=True)
class Output:
    text: str
    finish_reason: FinishReason

    @property
    def token_ids(self) -> list[int]:
        """As vLLM returns them: a stopped generation's ids end with the EOS it sampled, whose
        text is not in the content; a truncated one has none."""
        return encode(self.text) + ([EOS_ID] if self.finish_reason == "stop" else [])

    @property
    def tokens(self) -> int:
        """Decoded tokens, the EOS included (it was decoded)."""
        return len(self.text) + (1 if self.finish_reason == "stop" else 0)


def _rng(*material: object) -> random.Random:
    digest = hashlib.blake2b(":".join(map(str, material)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


HOSTILE = "HOSTILE"


def problem_answers(problem_key: str) -> list[str]:
    """The answers a problem's generations draw from: the first is the 'correct' one."""
    base = _rng("answer", problem_key).randrange(100, 999)
    return [str(base), str(base + 1), str(base * 2), str(base + 17)]


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@dataclass(frozen=True)
class Difficulty:
    """How one problem behaves under aggregation (``SimConfig.difficulty``), drawn from its key.

    A generation shown no answers (round 0) is right with probability ``accuracy``. An aggregation
    prompt that shows answers, a share ``c`` of them right, is right with probability
    ``(1 - pull) * accuracy + pull * c + lift`` (capped at 1): it leans toward what it was shown and
    improves a little on its own; when wrong, it repeats a shown wrong answer with probability
    ``pull``, else writes one of the problem's wrong answers. So rounds raise the share right and
    the agreement on easy and medium problems. A *hard* problem (a share ``hard_share`` of them) is
    rarely right, has many distinct wrong answers and no pull: its population never converges.
    """

    accuracy: float
    pull: float
    lift: float
    wrong: tuple[str, ...]

    @classmethod
    def of(cls, problem_key: str, hard_share: float) -> Difficulty:
        rng = _rng("difficulty", problem_key)
        right, *wrong = problem_answers(problem_key)
        if rng.random() < hard_share:
            base = int(right)
            many = tuple(str(base + 100 + 37 * i) for i in range(12))
            return cls(accuracy=0.1, pull=0.0, lift=0.0, wrong=many)
        return cls(accuracy=0.25 + 0.6 * rng.random(), pull=0.6, lift=0.1, wrong=tuple(wrong))

    def answer(self, rng: random.Random, right: str, shown: list[str]) -> str:
        if not shown:
            return right if rng.random() < self.accuracy else rng.choice(self.wrong)
        c = sum(1 for a in shown if a == right) / len(shown)
        if rng.random() < min(1.0, (1 - self.pull) * self.accuracy + self.pull * c + self.lift):
            return right
        shown_wrong = [a for a in shown if a != right]
        if shown_wrong and rng.random() < self.pull:
            return rng.choice(shown_wrong)
        return rng.choice(self.wrong)


def shown_answers(prompt: str, problem_key: str) -> list[str]:
    """The boxed answers an aggregation prompt shows (its candidates' tails), after the problem."""
    rest = prompt.split(problem_key, 1)[-1] if problem_key else prompt
    return [a for a in _BOXED.findall(rest) if a]


def sample_output(
    config: SimConfig,
    prompt: str,
    seed: int | str | None,
    max_tokens: int,
    problem_key: str,
    scripted: Scripted | None = None,
) -> Output:
    """The generation for (prompt, seed): its length and answer are a pure function of both, so
    the same workload costs the same whoever schedules it. A ``scripted`` problem (``--answers``)
    has its gold answer as the right one and behaves as its script says."""
    rng = _rng("output", seed, prompt)
    runaway = rng.random() < config.runaway_share
    drawn = rng.lognormvariate(math.log(config.median_tokens), config.length_sigma)
    answers = problem_answers(problem_key)
    if config.hostile_answer and HOSTILE in problem_key:
        answers[0] = config.hostile_answer
    behaviour = "draw"
    if scripted is not None:
        answers[0], behaviour = scripted.answer, scripted.behaviour
        runaway = runaway or behaviour == "runaway"
    if behaviour in ("right", "unboxed"):
        answer = answers[0]
    elif behaviour == "wrong":
        answer = rng.choice(answers[1:])
    elif config.difficulty:
        difficulty = Difficulty.of(problem_key, config.hard_share)
        answer = difficulty.answer(rng, answers[0], shown_answers(prompt, problem_key))
    else:
        answer = answers[0] if rng.random() < config.correct_share else rng.choice(answers[1:])
    closing = f"\n</think>\n\nThe answer is \\boxed{{{answer}}}."
    if behaviour == "unboxed":
        closing = f"\n</think>\n\nThe answer is {answer}."
    elif behaviour == "unparsed":
        closing = "\n</think>\n\nThe answer is \\boxed{\\quad}."
    natural = max(len(closing) + 16, round(drawn))
    if runaway or natural + 1 > max_tokens:  # + the EOS
        return Output(_filler(rng, "<think>\n", max_tokens), "length")
    return Output(_filler(rng, "<think>\n", natural - len(closing)) + closing, "stop")


def _filler(rng: random.Random, head: str, length: int) -> str:
    words = [head]
    size = len(head)
    while size < length:
        w = rng.choice(_WORDS)
        words.append(w + " ")
        size += len(w) + 1
    return "".join(words)[:length]


# -- prefix cache --------------------------------------------------------------------------------


def block_hashes(ids: list[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of ``ids`` (a block's hash covers its whole prefix)."""
    out: list[int] = []
    prev = 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        prev = hash((prev, *ids[start : start + block_size]))
        out.append(prev)
    return out


class PrefixCache:
    """An LRU of full prompt blocks, as vLLM's automatic prefix caching keeps them."""

    def __init__(self, capacity_blocks: int, block_size: int) -> None:
        self.capacity = capacity_blocks
        self.block_size = block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def admit(self, hashes: list[int]) -> int:
        """Tokens of the prompt already cached (its longest cached block prefix); then cache it."""
        hits = 0
        for h in hashes:
            if h not in self._blocks:
                break
            hits += 1
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits * self.block_size

    def clear(self) -> None:
        self._blocks.clear()


# -- scheduler -----------------------------------------------------------------------------------


@dataclass
class Sequence:
    prompt_tokens: int
    hashes: list[int]
    output_tokens: int
    priority: int = 0
    arrival: float = 0.0
    remaining: int = 0
    uncached: int = 0
    admitted: float | None = None
    finished: float | None = None
    aborted: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Stats:
    requests: int = 0
    finished: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    decode_tokens: int = 0
    busy_seq_s: float = 0.0  # ∫ running sequences dt, in model time
    prefill_s: float = 0.0
    first_arrival: float | None = None
    last_finish: float | None = None
    max_waiting: int = 0
    http_requests: dict[str, int] = field(default_factory=dict)  # per endpoint
    priorities: dict[str, int] = field(default_factory=dict)  # generation requests per priority sent
    header_values: dict[str, int] = field(default_factory=dict)  # generation requests per recorded value

    def as_dict(self, config: SimConfig) -> dict[str, object]:
        window = (
            self.last_finish - self.first_arrival
            if self.first_arrival is not None and self.last_finish is not None
            else None
        )
        work_s = self.decode_tokens * config.full_batch_token_s + self.prefill_s
        return {
            "requests": self.requests,
            "finished": self.finished,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefix_cache_hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None,
            "decode_tokens": self.decode_tokens,
            "prefill_s": self.prefill_s,
            "busy_seq_s": self.busy_seq_s,
            "window_s": window,
            "utilisation": (self.busy_seq_s / (config.max_num_seqs * window)) if window else None,
            "work_at_full_batch_s": work_s,
            "max_waiting": self.max_waiting,
            "http_requests": dict(self.http_requests),
            "priorities": dict(self.priorities),
            "header_values": dict(self.header_values),
            "max_num_seqs": config.max_num_seqs,
            "step_s_batch_1": config.step_s(1),
            "step_s_full": config.step_s(config.max_num_seqs),
        }


class Scheduler:
    """Continuous batching in real time. ``submit`` returns when the sequence has finished."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.cache = PrefixCache(config.cache_blocks, config.block_size)
        self.stats = Stats()
        self.running: list[Sequence] = []
        self._waiting: list[tuple[int, int, Sequence]] = []  # heap of (priority, arrival order, seq)
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._clock = 0.0  # model time, seconds on the loop's clock
        self._t0 = asyncio.get_running_loop().time()
        self.trace: list[tuple[float, int, int]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reset(self) -> None:
        """Forget counters, trace and cache (between benchmark configurations)."""
        self.stats = Stats()
        self.cache.clear()
        self.trace = []
        self._t0 = self.now()

    def _record(self) -> None:
        t = round(self.now() - self._t0, 4)
        point = (t, len(self.running), len(self._waiting))
        if self.trace and self.trace[-1][1:] == point[1:]:
            return
        self.trace.append(point)

    async def submit(self, seq: Sequence) -> None:
        now = self.now()
        seq.arrival = now
        seq.remaining = seq.output_tokens
        priority = seq.priority if self.config.enable_priority else 0
        heapq.heappush(self._waiting, (priority, next(self._order), seq))
        self.stats.requests += 1
        self.stats.prompt_tokens += seq.prompt_tokens
        if self.stats.first_arrival is None:
            self.stats.first_arrival = now
        self.stats.max_waiting = max(self.stats.max_waiting, len(self._waiting))
        self._record()
        self._wake.set()
        try:
            await asyncio.shield(seq.done)
        except asyncio.CancelledError:
            self._abort(seq)
            raise

    def _abort(self, seq: Sequence) -> None:
        """A client went away: drop the sequence (vLLM aborts a disconnected request)."""
        self._waiting = [w for w in self._waiting if w[2] is not seq]
        heapq.heapify(self._waiting)
        seq.aborted = True

    def _admit(self) -> float:
        """Move waiting sequences into free slots; returns the prefill time they add."""
        prefill = 0.0
        while self._waiting and len(self.running) < self.config.max_num_seqs:
            _, _, seq = heapq.heappop(self._waiting)
            if seq.aborted:
                continue
            cached = min(self.cache.admit(seq.hashes), max(0, seq.prompt_tokens - 1))
            seq.uncached = seq.prompt_tokens - cached
            seq.admitted = self.now()
            self.stats.cached_tokens += cached
            prefill += seq.uncached * self.config.prefill_ms_per_token / 1000
            self.running.append(seq)
        return prefill

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._clock = loop.time()
        while True:
            prefill = self._admit()
            self._record()
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                self._clock = max(self._clock, loop.time())
                continue
            batch = len(self.running)
            step = self.config.step_s(batch)
            steps_to_next = min(max(1, s.remaining) for s in self.running)
            deadline = self._clock + prefill + steps_to_next * step
            if batch < self.config.max_num_seqs:
                self._wake.clear()
                timeout = max(0.0, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            else:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            if now >= deadline:
                steps = steps_to_next
            else:  # an arrival can take a free slot: stop after the step in progress
                steps = min(steps_to_next, max(0, math.floor((now - self._clock - prefill) / step)) + 1)
            self._clock += prefill + steps * step
            self.stats.prefill_s += prefill
            self.stats.busy_seq_s += batch * (prefill + steps * step)
            self._advance(steps)

    def _advance(self, steps: int) -> None:
        still: list[Sequence] = []
        for seq in self.running:
            if seq.aborted:
                continue
            used = min(steps, seq.remaining)
            seq.remaining -= used
            self.stats.decode_tokens += used
            if seq.remaining > 0:
                still.append(seq)
                continue
            seq.finished = self._clock
            self.stats.finished += 1
            self.stats.last_finish = self._clock
            seq.done.set_result(None)
        self.running = still
