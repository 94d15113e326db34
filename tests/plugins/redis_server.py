"""Fixtures that start a real ``redis-server`` (AOF on) on a free loopback port in a temp dir, and
a store opened on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mrsa.store.opening import open_store
from mrsa.store.redis import RedisStore
from mrsa.store.settings import StoreSettings
from testkit.redis_process import RedisProcess, RedisUnavailable


class RedisServer(RedisProcess):
    """:class:`RedisProcess` that fails the test (never skips) when Redis cannot start."""

    def start(self, timeout_s: float = 10.0) -> None:
        try:
            super().start(timeout_s)
        except RedisUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A :class:`RedisStore` on a fresh redis-server, opened with the default settings."""
    async with open_store(StoreSettings(redis_url=redis_server.url)) as store:
        assert isinstance(store, RedisStore)
        yield store
