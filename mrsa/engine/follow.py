"""Following a job: its events, as they are stored, until it is over.

Every reader that waits for a job (the API's event stream and chat completions, the in-process
runner of ``mrsa solve``) reads through :func:`follow`, so "over" means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mrsa.domain import Event
from mrsa.store.base import JobStore

# The last read after the job turned terminal: its ``done`` event is written just after.
FINAL_READ_MS = 500


async def follow(
    store: JobStore, job_id: str, after: str | None = None, block_ms: int = 5_000
) -> AsyncIterator[tuple[str, Event]]:
    """``(event id, event)`` of ``job_id`` after the id ``after``, waiting up to ``block_ms`` per
    store read for new ones; ends after the job's ``done`` event.

    A job that ends without one (cancelled by the store alone, or gone) ends it too: when a read
    comes back empty and the job is terminal or unknown, the events are read once more — the engine
    records the terminal state before its ``done`` event — and the iterator ends after them.
    Store errors (``StoreUnavailable``) propagate; resume with the last id received."""
    while True:
        batch = await store.read_events(job_id, after, block_ms=block_ms)
        for event_id, event in batch:
            after = event_id
            yield event_id, event
            if event.type == "done":
                return
        if not batch:
            job = await store.get_job(job_id)
            if job is None or job.status.terminal:
                for item in await store.read_events(job_id, after, block_ms=min(block_ms, FINAL_READ_MS)):
                    yield item
                return
