"""One passthrough's trip to the backend and back, under limits: the reply is relayed as it
arrives (never held whole), and it ends — the backend's connection closed — when it is done, when
the client leaves, or when a limit cuts it.

Limits (:class:`RelayLimits`, from ``MRSA_API_PASSTHROUGH_*``): the bytes relayed, a total deadline
from the start of the request (the wait for the reply's headers included: a non-streaming backend
says nothing while it generates), and an idle deadline between the body's chunks once the reply
has begun. A shutdown tightens the total deadline to its drain time (:meth:`Relay.tighten`).

A reply cut short is never made to look complete: an event stream gets a last ``data:`` event
with an ``error`` object (OpenAI SDKs raise it) and ends; any other body is broken off (the
connection closes without the body's end, so a client's read fails).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio
import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from mrsa.api.errors import ApiError
from mrsa.urls import redact

log = logging.getLogger("mrsa.api")

# No read timeout of httpx's own: the relay's deadlines bound every wait.
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=10.0)
CLOSE_WAIT_S = 5.0  # closing the backend's connection never holds a response longer than this


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every relay's client (building one per request costs milliseconds)."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class RelayLimits:
    max_bytes: int
    timeout_s: float
    idle_s: float


class Relay:
    """One passthrough request: its own httpx client (so closing it closes its connection), the
    backend's reply, and the deadline that bounds both. ``on_close`` runs once, when it ends."""

    def __init__(self, url: str, limits: RelayLimits, on_close: Callable[[], None]) -> None:
        self.url = url
        self.limits = limits
        self.deadline = anyio.current_time() + limits.timeout_s
        self.draining = False  # the deadline is a shutdown's, not the passthrough's own
        self.sent = 0
        self._scope: anyio.CancelScope | None = None
        self._client = httpx.AsyncClient(timeout=TIMEOUT, verify=_tls())
        self._upstream: httpx.Response | None = None
        self._on_close: Callable[[], None] | None = on_close

    def tighten(self, at: float) -> None:
        """End by ``at`` (loop time) at the latest: a shutdown's drain."""
        if at < self.deadline:
            self.deadline, self.draining = at, True
            if self._scope is not None:
                self._scope.deadline = at

    @contextlib.contextmanager
    def _within_deadline(self) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope(deadline=self.deadline) as scope:
            self._scope = scope
            try:
                yield scope
            finally:
                self._scope = None

    def deadline_reason(self) -> str:
        if self.draining:
            return "the API is shutting down (its drain time, MRSA_API_PASSTHROUGH_DRAIN_S, is over)"
        return (
            f"the passthrough's total deadline of {self.limits.timeout_s:g} s "
            "(MRSA_API_PASSTHROUGH_TIMEOUT_S)"
        )

    async def open(self, receive: Receive, request: httpx.Request) -> httpx.Response | None:
        """Send ``request``; the backend's reply once its headers are in, or None when the client
        left first (the request to the backend is then cancelled). Raises a 502 when the backend
        does not answer, a 504 at the deadline."""
        error: httpx.HTTPError | None = None
        async with while_connected(receive) as client:
            with self._within_deadline() as scope:
                try:
                    self._upstream = await self._client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    error = exc
        if client.left:
            return None
        if error is not None:
            why = f"{type(error).__name__}: {error}"
            raise ApiError(502, f"backend {redact(self.url)} did not answer: {why}")
        if scope.cancelled_caught or self._upstream is None:
            raise ApiError(
                504, f"backend {redact(self.url)} sent no reply before the cut: {self.deadline_reason()}"
            )
        return self._upstream

    async def pump(self, send: Send, framing: EventFraming | None = None) -> str | None:
        """Send the reply's body on as it arrives; None when the backend's body ended, else why the
        relay cut it. With ``framing`` (an event stream) only whole events are sent, so a cut
        falls between two events."""
        assert self._upstream is not None
        stream = self._upstream.aiter_raw()
        with self._within_deadline():
            while True:
                with anyio.move_on_after(self.limits.idle_s) as idle:
                    try:
                        chunk = await anext(stream, None)
                    except httpx.HTTPError as exc:
                        return f"the backend broke off: {type(exc).__name__}: {exc}"
                if idle.cancelled_caught:
                    return (
                        f"the backend sent nothing for {self.limits.idle_s:g} s (MRSA_API_PASSTHROUGH_IDLE_S)"
                    )
                ended = chunk is None
                if framing is not None:  # at the end, what is left of the last event goes as it is
                    chunk = framing.rest() if chunk is None else framing.whole_events(chunk)
                chunk = chunk or b""
                room = self.limits.max_bytes - self.sent
                if len(chunk) > room:
                    await self._send_body(send, EventFraming.cut(chunk, room) if framing else chunk[:room])
                    return (
                        f"the reply is larger than {self.limits.max_bytes} bytes "
                        "(MRSA_API_PASSTHROUGH_MAX_BYTES)"
                    )
                await self._send_body(send, chunk)
                if ended:
                    return None
        return self.deadline_reason()

    async def _send_body(self, send: Send, chunk: bytes) -> None:
        if chunk:
            self.sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def aclose(self) -> None:
        """Close the backend's reply and connection (shielded: also when the client's request was
        cancelled), then give the passthrough's slot back. Idempotent."""
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_WAIT_S):
                if self._upstream is not None:
                    await self._upstream.aclose()
                await self._client.aclose()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class EventFraming:
    """Server-sent events cut at event boundaries: a trailing partial event is held back until its
    end arrives (up to ``HOLD_MAX`` bytes, then it is sent as it is)."""

    HOLD_MAX = 1 << 20

    def __init__(self) -> None:
        self._pending = b""

    @staticmethod
    def boundary(data: bytes, within: int | None = None) -> int:
        """The end of the last whole event in ``data[:within]`` (0: none)."""
        data = data if within is None else data[:within]
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)

    def whole_events(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = len(data) if len(data) - self.boundary(data) > self.HOLD_MAX else self.boundary(data)
        self._pending = data[end:]
        return data[:end]

    def rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    @classmethod
    def cut(cls, events: bytes, room: int) -> bytes:
        """The whole events of ``events`` that fit in ``room`` bytes."""
        return events[: cls.boundary(events, room)]


@dataclass
class Client:
    left: bool = False


@contextlib.asynccontextmanager
async def while_connected(receive: Receive) -> AsyncIterator[Client]:
    """Run the body while the client stays (its request body read before): when it leaves, the
    body is cancelled and ``left`` says so."""
    client = Client()
    try:
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                client.left = True
                group.cancel_scope.cancel()

            group.start_soon(watch)
            yield client
            group.cancel_scope.cancel()
    except BaseExceptionGroup as failed:  # the body's own error, as itself (not in a group)
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise


class RelayResponse(Response):
    """The backend's status and (filtered) headers at once, then its body as :meth:`Relay.pump`
    relays it, while a watcher ends the relay when the client goes. However it ends, the backend's
    connection is closed. (A :class:`Response` for the routes' types; it renders no body.)"""

    def __init__(
        self, relay: Relay, status: int, headers: list[tuple[bytes, bytes]], *, event_stream: bool
    ) -> None:
        self.relay = relay
        self.status_code = status
        self.raw_headers = headers
        self.event_stream = event_stream
        self.background = None
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            cut: str | None = None
            async with while_connected(receive) as client:
                cut = await self.relay.pump(send, EventFraming() if self.event_stream else None)
            if client.left:
                log.info(
                    "passthrough: the client left after %d bytes; backend request closed", self.relay.sent
                )
                return
            if cut is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            log.warning("passthrough cut after %d bytes: %s", self.relay.sent, cut)
            if self.event_stream:  # a last event the client's SDK raises, then a proper end
                await send({"type": "http.response.body", "body": error_event(cut), "more_body": False})
            # Otherwise return without the body's end: the server closes the connection, so the
            # client sees a broken reply rather than a complete-looking truncated one.
        except OSError:  # the client's connection failed under a send: it has gone
            log.info("passthrough: the client's connection failed after %d bytes", self.relay.sent)
        finally:
            await self.relay.aclose()


def error_event(reason: str) -> bytes:
    """A server-sent event carrying an error, as the RSA chat stream ends a failed job (the blank
    lines first end an event the cut may have left half-written)."""
    message = f"passthrough cut short: {reason}"
    body = {"message": message, "error": {"message": message, "type": "passthrough_cut", "code": "cut"}}
    return b"\n\ndata: " + json.dumps(body).encode() + b"\n\n"
