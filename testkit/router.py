"""A test-only front for several inference servers: what a cluster router does, in 100 lines.

Two policies, as the routers people run offer them:

- ``round-robin``: each request goes to the next replica, whatever it is (a plain Kubernetes
  Service, production-stack's ``roundrobin``);
- ``affinity``: a request that carries the affinity header goes to the replica its value hashes to
  on a consistent-hash ring (production-stack's ``session`` routing, SGLang's gateway with
  ``x-smg-routing-key``, llm-d's session affinity); one without it goes round-robin.

It is not a product: no health checks, no retries, no streaming. It forwards each request whole
and answers ``GET /router/stats`` (requests per replica) itself. Loopback only.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import aiohttp
from aiohttp import web

Policy = Literal["round-robin", "affinity"]
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
)


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing: each replica owns ``vnodes`` points on a ring; a key goes to the owner
    of the first point at or after its hash, so adding a replica moves only its share of keys."""

    def __init__(self, replicas: int, vnodes: int = 64) -> None:
        points = sorted((_point(f"replica-{r}#{v}"), r) for r in range(replicas) for v in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [r for _, r in points]

    def owner(self, key: str) -> int:
        i = bisect.bisect_left(self._hashes, _point(key)) % len(self._hashes)
        return self._owners[i]


class Router:
    """Forwards every request to one of ``upstreams`` by ``policy``."""

    def __init__(self, upstreams: Sequence[str], policy: Policy, header: str) -> None:
        if not upstreams:
            raise ValueError("upstreams: at least one replica is needed")
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.policy: Policy = policy
        self.header = header.lower()
        self.ring = HashRing(len(self.upstreams))
        self._next = itertools.cycle(range(len(self.upstreams)))
        self.requests = [0] * len(self.upstreams)
        self.keyed = 0
        self._session: aiohttp.ClientSession | None = None

    def pick(self, headers: dict[str, str]) -> int:
        key = headers.get(self.header)
        if self.policy == "affinity" and key:
            self.keyed += 1
            return self.ring.owner(key)
        return next(self._next)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        replica = self.pick(headers)
        self.requests[replica] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
            )
        sent = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            f"{self.upstreams[replica]}{request.path_qs}",
            headers=sent,
            data=await request.read(),
        ) as reply:
            body = await reply.read()
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=reply.status, body=body, headers=kept)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "policy": self.policy,
                "upstreams": self.upstreams,
                "requests": self.requests,
                "keyed": self.keyed,
            }
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextlib.asynccontextmanager
async def running_router(
    upstreams: Sequence[str], policy: Policy, header: str
) -> AsyncIterator[tuple[str, Router]]:
    """The router on a free loopback port, in the running event loop; yields (its URL, it)."""
    router = Router(upstreams, policy, header)
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/router/stats", router.stats)
    app.router.add_route("*", "/{tail:.*}", router.forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", router
    finally:
        await runner.cleanup()
        await router.aclose()
