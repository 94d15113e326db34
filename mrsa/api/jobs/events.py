"""A job's progress as server-sent events, resumable with ``Last-Event-ID``.

Each event is ``id: <store event id>``, ``event: <type>`` and ``data: <Event JSON>``. The stream
ends when :func:`~mrsa.engine.follow.follow` does: after the job's ``done`` event (or, for a job
that ended without one, once it is terminal and no event is left); sse-starlette sends a comment ping every ``ping_s`` so proxies keep it open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from mrsa.engine.follow import follow
from mrsa.store.base import JobStore, StoreUnavailable

log = logging.getLogger("mrsa.api")

# Event ids are opaque strings chosen by the store: Redis stream ids ("1712345678901-0") or the
# memory store's counters ("3"). Anything else in Last-Event-ID is rejected before the store sees it.
EVENT_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"
# Each part of a Redis stream id is an unsigned 64-bit number: 20 digits may still be too large.
EVENT_ID_PART_MAX = 2**64 - 1


def event_id_fits(event_id: str) -> bool:
    """Whether each part of an id matching :data:`EVENT_ID_PATTERN` fits a stream id (64 bits)."""
    return all(int(part) <= EVENT_ID_PART_MAX for part in event_id.split("-"))


async def job_events(
    store: JobStore, job_id: str, after: str | None, block_ms: int
) -> AsyncIterator[dict[str, str]]:
    """Events of ``job_id`` after the id ``after`` until the job is over (:func:`follow`). When the
    store becomes unreachable the stream ends (logged) rather than breaking: EventSource clients
    reconnect with the last id they got and miss nothing."""
    try:
        async for event_id, event in follow(store, job_id, after, block_ms):
            yield {"id": event_id, "event": event.type, "data": event.model_dump_json()}
    except StoreUnavailable as exc:
        log.warning("event stream of job %s ended: %s", job_id, exc)
