"""redis-py clients for :mod:`mrsa.store.redis`: one blocking pool to a plain URL, or to the master a
set of Sentinels names (see :mod:`mrsa.store.redis_address` for the URL).

Following a failover: a Sentinel-managed connection asks the Sentinels for the master's address
whenever it (re)connects. Connections to the old master break when Sentinel demotes it (Sentinel
kills the clients of a reconfigured instance) or answer ``READONLY`` to a write (redis-py then
drops the connection and raises ``ConnectionError``); a blocked XREADGROUP is answered
``UNBLOCKED``, and a master configured with ``min-replicas-to-write`` that lost its replicas (the
old master, cut off, while the Sentinels promote another) answers ``NOREPLICAS``: both are handled
here like ``READONLY`` (:data:`NOT_A_MASTER`). All of them are connection errors: redis-py's retry
reconnects, asking the Sentinels again, and what outlasts the retries reaches the store as
:class:`~mrsa.store.base.StoreUnavailable`, which workers and the API already wait out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from mrsa.store.redis_address import SentinelAddress, parse_redis_url

SOCKET_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
# A Sentinel that does not answer is skipped for the next one: short timeouts, so discovery of the
# master is not held up for a socket timeout by one unreachable Sentinel.
SENTINEL_TIMEOUT_S = 2.0
POOL_WAIT_S = 10.0  # longest wait for a free connection before StoreUnavailable
# Replies of a server that cannot serve as the master now (beside READONLY, which redis-py maps to
# ReadOnlyError): a blocking read cut short by a demotion, a master without its required replicas,
# a replica that lost its master.
NOT_A_MASTER = ("UNBLOCKED", "NOREPLICAS", "MASTERDOWN")


class _FailoverAwareConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that also treats the :data:`NOT_A_MASTER` replies as a lost
    master: disconnect, so the next connect asks the Sentinels; ``READONLY`` is handled so by
    redis-py already."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not str(exc).startswith(NOT_A_MASTER):
                raise
            await self.disconnect()
            raise RedisConnectionError(f"not the master (any more): {exc}") from exc


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with :class:`BlockingConnectionPool`'s wait for a free connection
    (redis-py ships the two separately; the MRO runs Sentinel's ``__init__`` then the blocking one)."""


@dataclass
class RedisClients:
    """The command client, the event-read client (the same one unless separate), and the Sentinel
    manager whose own connections are closed with them."""

    client: aioredis.Redis
    events: aioredis.Redis
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        if self.events is not self.client:
            await self.events.aclose()
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def _client_options(max_connections: int) -> dict[str, Any]:
    return {
        "max_connections": max_connections,
        "timeout": POOL_WAIT_S,
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
    }


def _plain(url: str, max_connections: int) -> aioredis.Redis:
    pool = BlockingConnectionPool.from_url(url, **_client_options(max_connections))
    return aioredis.Redis.from_pool(pool)


def _sentinel(address: SentinelAddress, sentinel_password: str | None) -> Sentinel:
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "decode_responses": True,
    }
    if sentinel_password is not None:
        sentinel_options["password"] = sentinel_password
    return Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_options)


def _master(sentinel: Sentinel, address: SentinelAddress, max_connections: int) -> aioredis.Redis:
    client: aioredis.Redis = sentinel.master_for(
        address.master,
        connection_pool_class=_SentinelBlockingPool,
        connection_class=_FailoverAwareConnection,
        db=address.db,
        username=address.username,
        password=address.password,
        **_client_options(max_connections),
    )
    return client


def open_clients(
    url: str, *, max_connections: int, events_connections: int | None, sentinel_password: str | None = None
) -> RedisClients:
    """Clients for ``url`` (nothing connects yet): ``max_connections`` for commands, and with
    ``events_connections`` a second pool of that size for event reads. Raises ``ValueError`` for
    a malformed Sentinel URL."""
    address = parse_redis_url(url)
    if address is None:
        client = _plain(url, max_connections)
        events = client if events_connections is None else _plain(url, events_connections)
        return RedisClients(client, events)
    sentinel = _sentinel(address, sentinel_password)
    client = _master(sentinel, address, max_connections)
    events = client if events_connections is None else _master(sentinel, address, events_connections)
    return RedisClients(client, events, sentinel)
