from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.hostile.server import HostileServer, hostile_server


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    async with hostile_server() as s:
        yield s
