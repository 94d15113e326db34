"""Jittered exponential back-off, the one schedule every retry loop waits on.

Retry number ``n`` (1-based) pauses a random time in ``[c/2, c]`` with ``c = min(longest_s,
first_s · 2^(n-1))``: doubling spreads a crowd of retrying processes over time, the jitter keeps
them from retrying in step (a Redis or an inference server coming up under a fleet of workers).
Used by the store's opening (:mod:`mrsa.store.opening`) and the worker (:mod:`workers.loop`,
:mod:`workers.worker_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

_MAX_DOUBLINGS = 16  # 2^16 × any first pause is past every cap in use; no float overflow after


def backoff_delay(first_s: float, longest_s: float, attempt: int) -> float:
    """The pause before retry ``attempt`` (1-based), jittered."""
    cap = min(longest_s, first_s * 2 ** min(max(attempt, 1) - 1, _MAX_DOUBLINGS))
    return random.uniform(cap / 2, cap)


class Backoff:
    """Successive pauses of one retry loop: :meth:`next` returns the next one."""

    def __init__(self, first_s: float, longest_s: float) -> None:
        self.first_s = first_s
        self.longest_s = longest_s
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return backoff_delay(self.first_s, self.longest_s, self.attempts)


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile; returns whether it is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
