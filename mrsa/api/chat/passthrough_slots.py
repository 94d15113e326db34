"""The open passthroughs of one API process: how many each key and the API may hold, and their
ends on shutdown.

Each open passthrough holds a connection to the backend and a client connection; a key is refused
one up front when it already has ``max_per_key`` open (429), and the API when it has ``max_total``
(503), as event streams are (:mod:`mrsa.api.streams`). On SIGTERM the server calls
:meth:`Passthroughs.request_drain`: new passthroughs are refused, and open ones get ``drain_s`` to
finish before their backend requests are cut, so a stalled backend cannot hold the shutdown.
"""

from __future__ import annotations

import asyncio

from mrsa.api.chat.relay import Relay, RelayLimits
from mrsa.api.errors import ApiError
from mrsa.api.streams import StreamSlots


class Passthroughs:
    def __init__(
        self, limits: RelayLimits, max_per_key: int, max_total: int, drain_s: float, retry_after_s: int
    ) -> None:
        self.limits = limits
        self.drain_s = drain_s
        self.retry_after_s = retry_after_s
        self.slots = StreamSlots(
            max_per_key,
            max_total,
            retry_after_s,
            what="passthrough chat requests",
            settings=("MRSA_API_MAX_PASSTHROUGHS_PER_KEY", "MRSA_API_MAX_PASSTHROUGHS"),
        )
        self.open: set[Relay] = set()
        self.closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, owner: str, url: str) -> Relay:
        """A relay holding one of ``owner``'s slots (given back when it closes), or 429/503."""
        if self.closing:
            raise ApiError(
                503,
                "the API is shutting down: passthrough refused; retry on another replica",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        slot = self.slots.acquire(owner)
        self._loop = asyncio.get_running_loop()

        def closed() -> None:
            slot.release()
            self.open.discard(relay)

        relay = Relay(url, self.limits, closed)
        self.open.add(relay)
        return relay

    def request_drain(self) -> None:
        """Begin the shutdown drain. Safe to call from a signal handler: the deadlines are
        tightened from the event loop."""
        self.closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        assert self._loop is not None
        at = self._loop.time() + self.drain_s
        for relay in list(self.open):
            relay.tighten(at)
