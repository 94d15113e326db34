"""How many event streams are open, per key and in all, so streams cannot starve other requests.

Every open ``GET /v1/jobs/{id}/events`` stream, and every chat completion waiting for its job,
holds a Redis connection while it blocks on XREAD. They read through their own connection pool
(the store's events pool, sized ``max_streams``), so ordinary requests keep the main pool; and one is
refused up front when its key already has ``max_streams_per_key`` open (429) or the API has
``max_streams`` (503) — rather than after a 10-second wait for a connection.
"""

from __future__ import annotations

from collections import Counter

from sse_starlette import EventSourceResponse
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mrsa.api.errors import ApiError


class StreamSlots:
    """Counts of open streams (one API process; asyncio, so no lock is needed)."""

    def __init__(
        self,
        per_key: int,
        total: int,
        retry_after_s: int,
        *,
        what: str = "event streams and waiting chat completions",
        settings: tuple[str, str] = ("MRSA_API_MAX_STREAMS_PER_KEY", "MRSA_API_MAX_STREAMS"),
    ) -> None:
        self.per_key = per_key
        self.total = total
        self.retry_after_s = retry_after_s
        self.what = what  # named in the 429/503 messages, with the settings that bound them
        self.settings = settings
        self.open: Counter[str] = Counter()

    def acquire(self, owner: str) -> StreamSlot:
        """A slot for one stream of ``owner``, or 429/503 when there is none."""
        retry = {"Retry-After": str(self.retry_after_s)}
        if self.open[owner] >= self.per_key:
            raise ApiError(
                429,
                f"too many {self.what} open for this key "
                f"({self.open[owner]} of {self.per_key}); close one ({self.settings[0]})",
                headers=retry,
            )
        if sum(self.open.values()) >= self.total:
            raise ApiError(
                503,
                f"the API has {self.total} {self.what} open ({self.settings[1]}); retry shortly",
                headers=retry,
            )
        self.open[owner] += 1
        return StreamSlot(self, owner)


class StreamSlot:
    def __init__(self, slots: StreamSlots, owner: str) -> None:
        self._slots = slots
        self._owner: str | None = owner

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self._owner is None:
            return
        self._slots.open[self._owner] -= 1
        if self._slots.open[self._owner] <= 0:
            del self._slots.open[self._owner]
        self._owner = None


class _GivesSlotBack:
    """Mixed into a streamed response: it gives its slot back however it ends (done, client gone,
    error) — also when the stream's generator never started, where a ``finally`` in it would not
    run."""

    def __init__(self, *args: object, slot: StreamSlot, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            self.slot.release()


class SlotEventSourceResponse(_GivesSlotBack, EventSourceResponse):
    """An event stream holding a slot."""


class SlotStreamingResponse(_GivesSlotBack, StreamingResponse):
    """A streamed response (a streaming chat completion) holding a slot."""
