"""A small HTTP/1.1 fault-injection proxy for tests: sits on a free loopback port in front of a real
backend and, on command, answers 500/503, holds a request past the client's timeout, or drops the
connection — for the next N matching requests or until healed.

It runs its own event loop in a daemon thread, so tests (and the worker processes they start)
talk to it like to any server::

    with FaultProxy(embedded_url) as proxy:
        proxy.fail_next(["503", "drop"])       # the next two generation requests fail
        proxy.fail_always("503")                # every one fails from now on
        proxy.heal()

Every request is parsed (request line, headers, Content-Length body) so faults count requests,
not connections; healthy requests are forwarded on a fresh upstream connection and the response is
relayed byte for byte (the proxy asks the upstream to close, so the client reconnects next time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

Fault = Literal["500", "503", "delay", "drop"]
FAULTS: tuple[Fault, ...] = ("500", "503", "delay", "drop")
_REASONS = {"500": "Internal Server Error", "503": "Service Unavailable"}


class FaultProxy:
    def __init__(self, upstream: str, *, path_prefix: str = "/v1/", delay_s: float = 120.0) -> None:
        """``path_prefix``: only requests whose path starts with it get faults (default: the
        OpenAI API, not tokenize/health); ``delay_s``: how long a ``delay`` fault holds a request."""
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None, upstream
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.path_prefix = path_prefix
        self.delay_s = delay_s
        self.port = 0
        self._lock = threading.Lock()
        self._next: deque[Fault] = deque()
        self._always: Fault | None = None
        self.requests = 0  # every request seen
        self.forwarded = 0
        self.injected: list[tuple[Fault, str]] = []  # (fault, path) in order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- control (thread-safe) ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, faults: Fault | Iterable[Fault], n: int = 1) -> None:
        """Inject ``faults`` (one fault ``n`` times, or a sequence in order) into the next requests."""
        seq = [faults] * n if isinstance(faults, str) else list(faults)
        assert all(f in FAULTS for f in seq), seq
        with self._lock:
            self._next.extend(seq)

    def fail_always(self, fault: Fault) -> None:
        assert fault in FAULTS
        with self._lock:
            self._always = fault

    def heal(self) -> None:
        with self._lock:
            self._next.clear()
            self._always = None

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._next)

    def _pick(self, path: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            if not path.startswith(self.path_prefix):
                return None
            fault = self._next.popleft() if self._next else self._always
            if fault is not None:
                self.injected.append((fault, path))
            return fault

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():

            async def shutdown() -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers = [line.split(":", 1) for line in lines[1:] if ":" in line]
                length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                fault = self._pick(path)
                if fault is None:
                    await self._forward(lines[0], headers, body, writer)
                    return  # the upstream closed: so do we (the client opens a new connection)
                if fault == "drop":
                    return
                if fault == "delay":
                    # Hold the request until the client gives up (its timeout) or delay_s passes.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(1), self.delay_s)
                    return
                payload = json.dumps({"error": {"message": f"injected fault: HTTP {fault}"}}).encode()
                writer.write(
                    f"HTTP/1.1 {fault} {_REASONS[fault]}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(
        self, request_line: str, headers: list[list[str]], body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            kept = [(k, v) for k, v in headers if k.strip().lower() not in ("connection", "keep-alive")]
            head = (
                request_line + "\r\n" + "".join(f"{k}:{v}\r\n" for k, v in kept) + "Connection: close\r\n\r\n"
            )
            up_writer.write(head.encode("latin-1") + body)
            await up_writer.drain()
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            with self._lock:
                self.forwarded += 1
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
