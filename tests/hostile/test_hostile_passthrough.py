"""Chat passthrough against a hostile backend, through a real ``mrsa serve`` process: a 1 GB
reply streams with bounded memory while ``/healthz`` stays quick, the byte cap and both deadlines
cut what a backend drags out, a client that leaves closes the backend's request, the per-key and
API-wide limits refuse the excess, hostile reply headers are dropped, and SIGTERM does not wait for
stalled backends. What the backend sees is observed from its own side (its open handlers and TCP
connections)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mrsa.api.chat.passthrough import PASSTHROUGH_HEADER
from mrsa.servers.server_process import free_port
from testkit.processes import Child, child_processes, clean_env
from tests.engine.test_equivalence_limits import HealthProbe
from tests.hostile.server import (
    HostileServer,
    completion,
    events_forever,
    huge,
    reply,
    silent_then,
    stall,
    trickle,
    with_headers,
)
from tests.plugins.redis_server import RedisServer

KEY_A, KEY_B = "key-a-passthrough", "key-b-passthrough"
PLAIN: dict[str, Any] = {"model": "served-model", "messages": [{"role": "user", "content": "hi"}]}
MIB = 1 << 20


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Api:
    url: str
    child: Child


async def until(what: str, condition: Callable[[], bool], within_s: float) -> float:
    """Seconds until ``condition`` holds (polled without blocking the hostile server's loop)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what}: not within {within_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def mrsa_serve(
    redis: RedisServer, backend: HostileServer, folder: Path, *flags: str
) -> AsyncIterator[Api]:
    """``mrsa serve`` on the hostile backend with ``flags``; ready when ``/healthz`` answers (not
    ``/readyz``: that would open a keep-alive connection to the backend, and the tests count them)."""
    with child_processes(folder, env=clean_env()) as start:
        port = free_port()
        keys = f"{KEY_A},{KEY_B}"
        args = ["--port", str(port), "--redis", redis.url, "--backend", backend.url, "--api-keys", keys]
        child = start("api", ["-m", "mrsa", "serve", *args, *flags])
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mrsa serve did not start:\n{child.log_tail(40)}", pytrace=False)
                await asyncio.sleep(0.2)
        yield Api(url, child)
        # Stopped by child_processes (SIGTERM); nothing may still be open by then.


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def read_until_broken(response: httpx.Response) -> tuple[int, str | None]:
    """Bytes read from a streamed response, and the error that ended it (None: a proper end)."""
    received = 0
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
    except httpx.HTTPError as exc:
        return received, type(exc).__name__
    return received, None


@pytest.mark.redis
@pytest.mark.timeout(600)
async def test_a_1gb_reply_streams_through_in_bounded_memory_with_healthz_answering(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The issue's done-when: a 1 GB chunked reply took the API to a 3.99 GB peak and /healthz to
    4.7 s. Relayed as it arrives, the API process stays under 200 MB over its idle RSS."""
    size = 1 << 30
    flags = ["--passthrough-max-bytes", str(2 << 30), "--passthrough-timeout", "600"]
    async with mrsa_serve(redis_server, server, tmp_path, *flags) as api:
        pid = api.child.proc.pid
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            for _ in range(3):  # warm up: the passthrough's code paths are imported and allocated
                r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth())
                assert r.status_code == 200 and r.headers[PASSTHROUGH_HEADER] == "no RSA fields", r.text
            idle = max([rss_bytes(pid) for _ in range(5)])
            with HealthProbe(api.url) as quiet:
                await asyncio.sleep(2.0)
            peak = idle
            server.play(huge(size, declared=False))
            started = time.monotonic()
            with HealthProbe(api.url) as busy:
                async with client.stream("POST", "/v1/chat/completions", json=PLAIN, headers=auth()) as s:
                    assert s.status_code == 200
                    received = 0
                    async for chunk in s.aiter_raw(MIB):
                        received += len(chunk)
                        if received % (8 * MIB) < len(chunk):
                            peak = max(peak, rss_bytes(pid))
            elapsed = time.monotonic() - started
            peak = max(peak, rss_bytes(pid))
    block = len(b'{"pad": "') + 65_536
    assert received == -(-size // block) * block  # every byte, in order of arrival
    over = (peak - idle) / MIB
    print(
        f"1 GiB relayed in {elapsed:.1f} s; API RSS idle {idle / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
        f"(+{over:.0f}); /healthz slowest {quiet.slowest * 1000:.0f} ms idle, {busy.slowest * 1000:.0f} ms "
        f"busy ({busy.answered} answers); load {os.getloadavg()[0]:.1f}"
    )
    assert over < 200, f"the API grew by {over:.0f} MiB relaying 1 GiB"
    assert busy.failures == [] and busy.answered >= 3
    assert busy.slowest < max(1.0, 10 * quiet.slowest), f"/healthz took {busy.slowest:.2f} s"


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_the_byte_cap_cuts_the_relayed_reply_and_closes_the_backend(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    cap = MIB
    async with (
        mrsa_serve(redis_server, server, tmp_path, "--passthrough-max-bytes", str(cap)) as api,
        httpx.AsyncClient(base_url=api.url, timeout=30) as client,
    ):
        # Chunked JSON: the relay stops at the cap and breaks the reply off (never a complete-looking
        # truncated body).
        server.play(huge(8 * MIB, declared=False))
        async with client.stream("POST", "/v1/chat/completions", json=PLAIN, headers=auth()) as s:
            assert s.status_code == 200
            received, error = await read_until_broken(s)
        assert received == cap and error == "RemoteProtocolError"
        await until("the backend's handler closed", lambda: server.open_chats == 0, 5)

        # Declared over the cap: refused before a byte is relayed.
        server.play(huge(8 * MIB, declared=True))
        r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth())
        assert r.status_code == 502 and "MRSA_API_PASSTHROUGH_MAX_BYTES" in r.json()["message"]
        await until("the backend's handler closed", lambda: server.open_chats == 0, 5)

        # An endless event stream through the OpenAI SDK: whole events up to the cap, then an error
        # event the SDK raises, naming the limit.
        server.play(events_forever())
        sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=KEY_A, max_retries=0)
        chunks = 0
        with pytest.raises(openai.APIError, match="MRSA_API_PASSTHROUGH_MAX_BYTES"):
            async for _ in await sdk.chat.completions.create(stream=True, **PLAIN):
                chunks += 1
        await sdk.close()
        assert cap // 30 < chunks <= cap // len(b'data: {"choices": []}\n\n')
        await until("the backend's handler closed", lambda: server.open_chats == 0, 5)
        assert "passthrough cut after" in api.child.log


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_trickling_and_stalled_backends_end_at_their_deadlines(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    total_s, idle_s = 4.0, 1.5
    flags = ["--passthrough-timeout", str(total_s), "--passthrough-idle-timeout", str(idle_s)]
    async with (
        mrsa_serve(redis_server, server, tmp_path, *flags) as api,
        httpx.AsyncClient(base_url=api.url, timeout=60) as client,
    ):

        async def timed(behaviour: Any) -> tuple[float, int, int, str | None]:
            server.play(behaviour)
            started = time.monotonic()
            async with client.stream("POST", "/v1/chat/completions", json=PLAIN, headers=auth()) as s:
                received, error = await read_until_broken(s)
            ended = time.monotonic() - started
            await until("the backend's handler closed", lambda: server.open_chats == 0, 2)
            return ended, s.status_code, received, error

        # A byte every 0.2 s is never idle: the total deadline ends it.
        ended, status, received, error = await timed(trickle(0.2))
        assert status == 200 and error == "RemoteProtocolError" and received >= 5
        assert total_s <= ended < total_s + 2.0, ended

        # Headers and one byte, then silence: the idle deadline ends it.
        ended, status, received, error = await timed(stall())
        assert (status, received, error) == (200, 1, "RemoteProtocolError")
        assert idle_s <= ended < idle_s + 2.0, ended

        # Silence before any reply (a non-streaming backend generating) is bounded by the total
        # deadline: 504, naming the setting.
        server.play(silent_then(600, reply(completion())))
        started = time.monotonic()
        r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth())
        ended = time.monotonic() - started
        assert r.status_code == 504 and "MRSA_API_PASSTHROUGH_TIMEOUT_S" in r.json()["message"]
        assert total_s <= ended < total_s + 2.0, ended
        await until("the backend's handler closed", lambda: server.open_chats == 0, 2)

        # A stalled event stream, read by the OpenAI SDK: it raises the idle deadline's error.
        server.play(stall(b'data: {"choices": []}\n\n', "text/event-stream"))
        sdk = openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key=KEY_A, max_retries=0)
        started = time.monotonic()
        with pytest.raises(openai.APIError, match="MRSA_API_PASSTHROUGH_IDLE_S"):
            async for _ in await sdk.chat.completions.create(stream=True, **PLAIN):
                pass
        await sdk.close()
        assert idle_s <= time.monotonic() - started < idle_s + 2.0
        await until("the backend's handler closed", lambda: server.open_chats == 0, 2)


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_a_client_leaving_closes_the_backend_request(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """40 s after its client hung up, the API used to be still reading from the backend."""
    async with mrsa_serve(redis_server, server, tmp_path) as api:
        # Mid-reply: the client reads the first byte and hangs up.
        server.play(stall())
        async with (
            httpx.AsyncClient(base_url=api.url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=PLAIN, headers=auth()) as s,
        ):
            assert s.status_code == 200
            assert await anext(s.aiter_raw()) == b"{"
            assert server.open_chats == 1
        gone = await until("the backend saw its request closed", lambda: server.open_chats == 0, 3)
        await until("no connection to the backend", lambda: server.connections() == 0, 3)
        print(f"backend request closed {gone:.2f} s after the client left (mid-reply)")

        # Before the reply: the client gives up while the backend is still silent.
        server.play(silent_then(600, reply(completion())))
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            request = asyncio.create_task(client.post("/v1/chat/completions", json=PLAIN, headers=auth()))
            await until("the backend got the request", lambda: server.open_chats == 1, 10)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        gone = await until("the backend saw its request closed", lambda: server.open_chats == 0, 3)
        await until("no connection to the backend", lambda: server.connections() == 0, 3)
        print(f"backend request closed {gone:.2f} s after the client left (before the reply)")


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_many_passthroughs_at_once_hit_the_limits_and_leave_nothing_open(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """300 stalled passthroughs of one key were all accepted and left 302 backend connections open."""
    per_key, total = 8, 12
    flags = ["--max-passthroughs-per-key", str(per_key), "--max-passthroughs", str(total)]
    server.play(stall())
    async with (
        mrsa_serve(redis_server, server, tmp_path, *flags) as api,
        httpx.AsyncClient(base_url=api.url, timeout=30, limits=httpx.Limits(max_connections=None)) as client,
        contextlib.AsyncExitStack() as open_streams,
    ):

        async def one(key: str) -> httpx.Response:
            request = client.build_request("POST", "/v1/chat/completions", json=PLAIN, headers=auth(key))
            response = await client.send(request, stream=True)
            open_streams.push_async_callback(response.aclose)
            return response

        a = await asyncio.gather(*(one(KEY_A) for _ in range(30)))
        b = await asyncio.gather(*(one(KEY_B) for _ in range(10)))
        a_status = sorted(r.status_code for r in a)
        b_status = sorted(r.status_code for r in b)
        assert a_status == [200] * per_key + [429] * (30 - per_key)
        assert b_status == [200] * (total - per_key) + [503] * (10 - (total - per_key))
        refused = next(r for r in a if r.status_code == 429)
        await refused.aread()
        assert "MRSA_API_MAX_PASSTHROUGHS_PER_KEY" in refused.json()["message"]
        assert refused.headers["retry-after"]
        busy = next(r for r in b if r.status_code == 503)
        await busy.aread()
        assert "MRSA_API_MAX_PASSTHROUGHS" in busy.json()["message"]
        await until("every accepted passthrough reached the backend", lambda: server.open_chats == total, 5)
        assert server.connections() == total
        await open_streams.aclose()  # every client closes
        await until("the backend's handlers closed", lambda: server.open_chats == 0, 5)
        await until("no connection to the backend", lambda: server.connections() == 0, 5)
        # The slots are back: the key may open passthroughs again.
        server.play(reply(completion()))
        r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth(KEY_A))
        assert r.status_code == 200, r.text


HOSTILE_HEADERS = [
    ("Set-Cookie", "session=stolen; Path=/"),
    ("WWW-Authenticate", 'Basic realm="phish"'),
    ("Proxy-Authenticate", 'Basic realm="phish"'),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Refresh", "0; url=https://evil.example/"),
    ("Location", "https://evil.example/"),
    ("Connection", "X-Request-Id, X-Hop"),
    ("X-Hop", "hop-by-hop by its Connection header"),
    ("X-Request-Id", "named in Connection, so hop-by-hop"),
    ("Content-Security-Policy", "script-src *"),
    ("Strict-Transport-Security", "max-age=0"),
]
KEPT_HEADERS = [
    ("X-Request-Id", "req-123"),
    ("openai-processing-ms", "42"),
    ("x-ratelimit-remaining-requests", "99"),
    ("Retry-After", "3"),
]


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_hostile_reply_headers_are_dropped_and_odd_bodies_sandboxed(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    html = b"<html><script>document.cookie</script></html>"
    async with (
        mrsa_serve(redis_server, server, tmp_path) as api,
        httpx.AsyncClient(base_url=api.url, timeout=30) as client,
    ):
        server.play(with_headers(HOSTILE_HEADERS, html, "text/html"))
        r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth())
        assert r.status_code == 200 and r.content == html
        for name, _ in HOSTILE_HEADERS:
            if name != "Content-Security-Policy":
                assert name not in r.headers, f"{name}: {r.headers.get(name)}"
        assert r.headers.get_list("content-security-policy") == ["sandbox"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-type"].startswith("text/html")
        assert len(r.headers.get_list("date")) == 1 and len(r.headers.get_list("server")) == 1
        assert r.headers["server"] == "uvicorn"  # ours, not the backend's

        body = json.dumps(completion()).encode()
        server.play(with_headers(KEPT_HEADERS, body, "application/json"))
        r = await client.post("/v1/chat/completions", json=PLAIN, headers=auth())
        assert r.status_code == 200 and r.json() == completion()
        for name, value in KEPT_HEADERS:
            assert r.headers.get_list(name) == [value], name
        assert r.headers["content-length"] == str(len(body))  # relayed byte for byte
        assert "content-security-policy" not in r.headers
        assert r.headers[PASSTHROUGH_HEADER] == "no RSA fields"


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_sigterm_cuts_stalled_passthroughs_after_the_drain_time(
    server: HostileServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """On SIGTERM the API waited ≈ 2 min for stalled passthroughs."""
    drain_s = 2.0
    server.play(stall())
    async with (
        mrsa_serve(redis_server, server, tmp_path, "--passthrough-drain", str(drain_s)) as api,
        httpx.AsyncClient(base_url=api.url, timeout=60) as client,
    ):
        streams = [
            await client.send(
                client.build_request("POST", "/v1/chat/completions", json=PLAIN, headers=auth()), stream=True
            )
            for _ in range(3)
        ]
        await until("the passthroughs reached the backend", lambda: server.open_chats == 3, 5)
        reads: list[Awaitable[tuple[int, str | None]]] = [read_until_broken(s) for s in streams]
        pending = asyncio.gather(*reads)
        started = time.monotonic()
        api.child.proc.send_signal(signal.SIGTERM)
        exited = await until("mrsa serve exited", lambda: api.child.proc.poll() is not None, drain_s + 10)
        ended = await pending
        for s in streams:
            await s.aclose()
        print(
            f"mrsa serve exited {exited:.2f} s after SIGTERM with 3 stalled passthroughs (drain {drain_s} s)"
        )
        assert drain_s <= exited < drain_s + 5, f"exit took {exited:.1f} s:\n{api.child.log_tail()}"
        assert api.child.proc.returncode == -signal.SIGTERM  # uvicorn re-raises it after a clean shutdown
        assert all(error == "RemoteProtocolError" for _, error in ended), ended
        await until("the backend's handlers closed", lambda: server.open_chats == 0, 2)
        assert "shutting down" in api.child.log
        assert time.monotonic() - started < drain_s + 10
