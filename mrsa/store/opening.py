"""``open_store``: the one place that opens a :class:`~mrsa.store.base.Store`.

Memory when there is no URL (``mrsa solve``, ``mrsa bench``), Redis otherwise (the API, the
workers, and ``--redis`` runs; a ``redis+sentinel://`` URL reaches the master Sentinel names and
follows its failovers, see :mod:`mrsa.store.redis_address`); the URL, key prefix, delivery limit
and retention come from :class:`~mrsa.store.settings.StoreSettings`. A Redis that does not answer
yet (compose starts the API and the workers with it; Redis may still be loading its data) is
retried for up to ``wait_s`` seconds, with jittered exponential back-off (:mod:`mrsa.backoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from mrsa.backoff import Backoff, pause
from mrsa.store.base import Store, StoreUnavailable
from mrsa.store.memory import MemoryStore
from mrsa.store.settings import StoreSettings

log = logging.getLogger("mrsa.store")

FIRST_RETRY_S = 0.5
LONGEST_RETRY_S = 10.0


@contextlib.asynccontextmanager
async def open_store(
    settings: StoreSettings,
    *,
    max_connections: int | None = None,
    events_connections: int | None = None,
    wait_s: float = 0.0,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Store]:
    """The store at ``settings.redis_url`` (memory when unset), closed when the block ends.

    Redis only: ``max_connections`` caps the connection pool (default
    :data:`mrsa.store.redis.MAX_CONNECTIONS`); ``events_connections`` gives event reads a pool of
    that size of their own (the API: its streams block on them). ``wait_s``: how long to retry a
    Redis that does not answer (0: fail at once, ``math.inf``: until ``stop`` is set); then, or when
    ``stop`` is set first, the last :class:`StoreUnavailable` is raised."""
    store: Store
    if settings.redis_url is None:
        store = MemoryStore(max_deliveries=settings.max_deliveries)
    else:
        store = await _connect(
            settings.redis_url, settings, max_connections, events_connections, wait_s, stop
        )
    try:
        yield store
    finally:
        await store.aclose()


async def _connect(
    url: str,
    settings: StoreSettings,
    max_connections: int | None,
    events_connections: int | None,
    wait_s: float,
    stop: asyncio.Event | None,
) -> Store:
    from mrsa.store import redis  # redis-py only where a Redis URL is given

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    backoff = Backoff(FIRST_RETRY_S, LONGEST_RETRY_S)
    while True:
        try:
            return await redis.connect(
                url,
                prefix=settings.redis_prefix,
                max_deliveries=settings.max_deliveries,
                retention_s=settings.retention_s,
                max_connections=max_connections or redis.MAX_CONNECTIONS,
                events_connections=events_connections,
                sentinel_password=settings.redis_sentinel_password,
            )
        except StoreUnavailable as exc:
            left = deadline - loop.time()
            if left <= 0 or (stop is not None and stop.is_set()):
                raise
            if backoff.attempts == 0:
                log.warning("waiting for redis: %s", exc)
            if await pause(min(backoff.next(), left), stop):
                raise
