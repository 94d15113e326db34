"""``python -m benchmarks.counted_worker``: the ``python -m workers`` worker (configured by the
``MRSA_*`` environment alone) that, on exit, writes its CPU time (from its first generation
request on: start-up and imports are not the orchestration's per-request cost) and Redis round
trips as JSON to ``$MRSA_BENCH_COUNTS``.

A round trip is one packet redis-py sends (a command, a pipeline or a script call), counted by
wrapping ``send_packed_command``, as ``benchmarks/dispatch_overhead.py`` does in-process.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
from typing import Any

from redis.asyncio.connection import AbstractConnection

from mrsa.backends.http import HttpClient
from workers.__main__ import main

COUNTS: dict[str, float] = {"round_trips": 0}
_CPU_AT_FIRST_REQUEST: list[float] = []


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_up() -> None:
    """Pay one-time costs (starting the answer-clustering processes, which import math-verify)
    before the measured window opens. Their CPU is theirs, not this process's."""
    from mrsa.engine.equivalence import shared_equivalence

    shared_equivalence().cluster(["42", "\\frac{1}{2}", "0.5"])


def _install_counters() -> None:
    send = AbstractConnection.send_packed_command

    async def counting_send(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
        COUNTS["round_trips"] += 1
        await send(conn, command, check_health)

    AbstractConnection.send_packed_command = counting_send  # type: ignore[method-assign,assignment]

    request_json = HttpClient.request_json

    async def counting_request(self: HttpClient, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("endpoint") == "chat" and not _CPU_AT_FIRST_REQUEST:
            _CPU_AT_FIRST_REQUEST.append(cpu_s())
        return await request_json(self, *args, **kwargs)

    HttpClient.request_json = counting_request  # type: ignore[method-assign]


def _write_counts() -> None:
    path = os.environ.get("MRSA_BENCH_COUNTS")
    if not path:
        return
    start = _CPU_AT_FIRST_REQUEST[0] if _CPU_AT_FIRST_REQUEST else cpu_s()
    with open(path, "w") as f:
        json.dump({**COUNTS, "cpu_s": cpu_s() - start}, f)


def _start_profile(path: str) -> None:
    """``$MRSA_BENCH_PROFILE``: write a cProfile of the worker's run there on exit."""
    import cProfile

    profile = cProfile.Profile()

    def dump() -> None:
        profile.disable()
        profile.dump_stats(path)

    profile.enable()
    atexit.register(dump)


if __name__ == "__main__":
    warm_up()
    _install_counters()
    atexit.register(_write_counts)
    if os.environ.get("MRSA_BENCH_PROFILE"):
        _start_profile(os.environ["MRSA_BENCH_PROFILE"])
    sys.exit(main(sys.argv[1:]))
