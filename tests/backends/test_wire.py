"""The wire contract (``mrsa/backends/wire.py``), held by both wires: the production
``AiohttpWire`` against a real aiohttp server on loopback, and the ``MockWire`` the unit tests put
under ``HttpClient``. Retries, deadlines and classification above the wire are tested in
``tests/backends/test_http_client.py`` (mock wire) and ``tests/hostile/`` (aiohttp wire)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from mrsa.backends.wire import (
    AiohttpWire,
    BodyTooLarge,
    MockWire,
    WireError,
    WireRequest,
    WireResponse,
    WireTimeout,
)
from tests.hostile.server import HostileServer, hostile_server, huge, reply, silent_then

CHAT = "/v1/chat/completions"


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    async with hostile_server() as s:
        yield s


async def echo(request: web.Request) -> web.StreamResponse:
    """What the server received, with two reply headers in mixed case."""
    return web.json_response(
        {
            "method": request.method,
            "authorization": request.headers.get("Authorization"),
            "content_type": request.headers.get("Content-Type"),
            "body": (await request.read()).decode(),
        },
        headers={"X-Served-By": "hostile", "Retry-After": "3"},
    )


def chat(server: HostileServer, *, read_timeout_s: float = 30.0, max_body_bytes: int = 2**20) -> WireRequest:
    return WireRequest(
        "POST",
        f"{server.url}{CHAT}",
        {"Authorization": "Bearer k", "Content-Type": "application/json"},
        b'{"a":1}',
        read_timeout_s=read_timeout_s,
        max_body_bytes=max_body_bytes,
    )


async def test_aiohttp_wire_sends_the_bytes_and_returns_the_whole_reply(server: HostileServer) -> None:
    server.play(echo)
    wire = AiohttpWire(4, tls=False)
    try:
        answer = await wire.send(chat(server))
    finally:
        await wire.aclose()
    assert answer.status == 200
    assert json.loads(answer.body) == {
        "method": "POST",
        "authorization": "Bearer k",
        "content_type": "application/json",
        "body": '{"a":1}',
    }
    assert answer.headers["x-served-by"] == "hostile"  # names lowercase, whatever the server sent
    assert answer.headers["retry-after"] == "3"


async def test_aiohttp_wire_returns_an_error_status_as_a_reply(server: HostileServer) -> None:
    server.play(reply({"error": "loading"}, 503))
    wire = AiohttpWire(4, tls=False)
    try:
        answer = await wire.send(chat(server))
    finally:
        await wire.aclose()
    assert (answer.status, json.loads(answer.body)) == (503, {"error": "loading"})  # classified above


async def test_aiohttp_wire_reports_a_silent_server_as_a_timeout(server: HostileServer) -> None:
    server.play(silent_then(10.0, reply({})))
    wire = AiohttpWire(4, tls=False)
    try:
        with pytest.raises(WireTimeout, match="Timeout"):
            await wire.send(chat(server, read_timeout_s=0.2))
    finally:
        await wire.aclose()


async def test_aiohttp_wire_reports_a_refused_connection_as_a_wire_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    wire = AiohttpWire(4, tls=False)
    try:
        with pytest.raises(WireError, match=f"Cannot connect to host 127.0.0.1:{port}") as info:
            await wire.send(WireRequest("GET", f"http://127.0.0.1:{port}/health", connect_timeout_s=2.0))
    finally:
        await wire.aclose()
    assert not isinstance(info.value, WireTimeout)


@pytest.mark.parametrize(("declared", "size"), [(True, 1_000_000), (False, None)])
async def test_aiohttp_wire_stops_reading_at_the_body_limit(
    server: HostileServer, declared: bool, size: int | None
) -> None:
    server.play(huge(1_000_000, declared=declared))
    wire = AiohttpWire(4, tls=False)
    try:
        with pytest.raises(BodyTooLarge) as info:
            await wire.send(chat(server, max_body_bytes=4096))
    finally:
        await wire.aclose()
    assert info.value.size == size  # the declared length, or unknown when the read was cut


async def test_aiohttp_wire_can_send_again_after_it_was_closed(server: HostileServer) -> None:
    """One wire may serve a probing client, closed after the probe, then the backend's client."""
    wire = AiohttpWire(4, tls=False)
    assert (await wire.send(chat(server))).status == 200
    await wire.aclose()
    try:
        assert (await wire.send(chat(server))).status == 200
    finally:
        await wire.aclose()


async def test_mock_wire_serves_sync_and_async_handlers_with_lowercase_headers() -> None:
    seen: list[WireRequest] = []

    def sync_handler(request: WireRequest) -> WireResponse:
        seen.append(request)
        return WireResponse.of_json(201, {"path": request.path, "body": request.json()}, {"X-Id": "7"})

    async def async_handler(request: WireRequest) -> WireResponse:
        return sync_handler(request)

    for handler in (sync_handler, async_handler):
        answer = await MockWire(handler).send(
            WireRequest("POST", "http://mock:1/v1/x?y=1", {"Authorization": "Bearer k"}, b'{"a":1}')
        )
        assert answer.status == 201
        assert json.loads(answer.body) == {"path": "/v1/x", "body": {"a": 1}}
        assert answer.headers == {"content-type": "application/json", "x-id": "7"}
    assert [r.headers for r in seen] == [{"authorization": "Bearer k"}] * 2


async def test_mock_wire_applies_the_body_limit_as_the_real_wire_does() -> None:
    wire = MockWire(lambda request: WireResponse(200, body=b"x" * 5000))
    with pytest.raises(BodyTooLarge) as info:
        await wire.send(WireRequest("GET", "http://mock:1/x", max_body_bytes=4096))
    assert info.value.size == 5000
    assert (await wire.send(WireRequest("GET", "http://mock:1/x", max_body_bytes=5000))).body == b"x" * 5000
