"""The one jittered back-off (:mod:`mrsa.backoff`) every retry loop waits on: doubling from the
first pause up to the cap, each pause drawn from its upper half, and a pause that ends when told
to stop."""

from __future__ import annotations

import asyncio
import time

from mrsa.backoff import Backoff, backoff_delay, pause


def test_pauses_double_up_to_the_cap_each_within_its_upper_half() -> None:
    backoff = Backoff(0.5, 4.0)
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for cap in caps:
        delay = backoff.next()
        assert cap / 2 <= delay <= cap
    assert backoff.attempts == len(caps)
    assert 2.0 <= backoff_delay(1.0, 4.0, 10_000) <= 4.0  # far past the cap: no overflow


def test_the_jitter_spreads_retries() -> None:
    assert len({round(backoff_delay(1.0, 1.0, 1), 6) for _ in range(50)}) > 10


async def test_a_pause_ends_when_stop_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await pause(30.0, stop) is True
    assert time.monotonic() - started < 5
    assert await pause(0.01) is False
    assert await pause(0.01, asyncio.Event()) is False
