"""A hostile OpenAI-compatible server: a real aiohttp server on a loopback port, in the test's
event loop, so the production client's aiohttp wire (timeouts, body reads) is what gets exercised.

It answers discovery like vLLM (``/v1/models``, ``/version``, ``/health``), tokenizes one token per
character, and answers each chat completion with the next behaviour of its script (the last one
repeats): a valid reply, a lie (``choices: []``, negative counts, lone surrogates…), a status with
headers, hostile headers, a trickle of bytes, a stall, a huge body or an endless event stream.
``GET /metrics`` answers with its own behaviour, for the workers' reader of a router's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODEL = "served-model"


def completion(content: str = "\\boxed{4}", **extra: Any) -> dict[str, Any]:
    """A well-formed vLLM chat completion of one choice; ``extra`` replaces top-level fields."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(content), "total_tokens": 10 + len(content)},
    }
    body.update(extra)
    return body


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return answer


def raw(body: bytes, status: int = 200) -> Behaviour:
    """Exactly these bytes as an ``application/json`` body (JSON a well-behaved encoder never writes)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type="application/json")

    return answer


def silent_then(seconds: float, behaviour: Behaviour) -> Behaviour:
    """Nothing for ``seconds`` (as a non-streaming server generating), then ``behaviour``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await behaviour(request)

    return answer


def trickle(every_s: float, limit: int = 10_000) -> Behaviour:
    """Headers at once, then one byte of (valid, leading) JSON whitespace every ``every_s``."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(limit):
                await response.write(b" ")
                await asyncio.sleep(every_s)
        return response

    return answer


def when_asked(needle: str, matched: Behaviour, otherwise: Behaviour) -> Behaviour:
    """``matched`` for a chat completion whose messages contain ``needle``, else ``otherwise``:
    one request's fault (a prompt the server stalls on) while it serves every other request."""

    async def answer(request: web.Request) -> web.StreamResponse:
        messages = (await request.json()).get("messages", [])
        return await (matched if needle in json.dumps(messages) else otherwise)(request)

    return answer


def huge(size: int, *, declared: bool) -> Behaviour:
    """A body of ``size`` bytes: announced in ``Content-Length`` (and only begun), or chunked."""

    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(size)
        response = web.StreamResponse(headers=headers)
        if not declared:
            response.enable_chunked_encoding()
        await response.prepare(request)
        block = b'{"pad": "' + b"x" * 65_536
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < size:
                await response.write(block)
                sent += len(block)
                if declared:
                    await asyncio.sleep(0.01)
        return response

    return answer


def stall(first: bytes = b"{", content_type: str = "application/json") -> Behaviour:
    """Headers and ``first`` at once, then silence for as long as the client stays."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(first)
        await asyncio.Event().wait()  # until aiohttp cancels the handler: the client left
        return response

    return answer


def with_headers(headers: list[tuple[str, str]], body: bytes, content_type: str) -> Behaviour:
    """``body`` with exactly these headers (repeats kept), as a hostile backend chooses them."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=body, content_type=content_type)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    return answer


def events_forever(event: bytes = b'data: {"choices": []}\n\n') -> Behaviour:
    """A server-sent event stream that never ends, as fast as it is read."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(event * 512)
        return response

    return answer


class HostileServer:
    """The server and its script; ``requests`` records every chat completion body received."""

    def __init__(self) -> None:
        self.script: list[Behaviour] = [reply(completion())]
        self.calls = 0
        self.open_chats = 0  # chat completions being answered now
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.url = ""
        self.tokenize_reply: Any = None  # set: /tokenize answers this instead
        self.detokenize_reply: Any = None
        self.metrics: Behaviour = raw(b"")  # what GET /metrics answers (a router's or server's)
        self._runner: web.AppRunner | None = None

    def play(self, *behaviours: Behaviour) -> None:
        """Answer the next chat completions with ``behaviours`` in order (the last one repeats)."""
        self.script = list(behaviours)
        self.calls = 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        behaviour = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.open_chats += 1
        try:
            return await behaviour(request)
        finally:  # also when aiohttp cancels the handler because the client closed the connection
            self.open_chats -= 1

    def connections(self) -> int:
        """Client connections open to this server now, as it sees them (idle keep-alive ones too)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        text = (await request.json())["prompt"]
        if self.tokenize_reply is not None:
            return web.json_response(self.tokenize_reply)
        return web.json_response({"tokens": [ord(c) for c in text], "count": len(text)})

    async def _detokenize(self, request: web.Request) -> web.StreamResponse:
        ids = (await request.json())["tokens"]
        if self.detokenize_reply is not None:
            return web.json_response(self.detokenize_reply)
        return web.json_response({"prompt": "".join(chr(i) for i in ids)})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return await self.metrics(request)

    async def start(self) -> None:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.paths.append(request.path)
            response: web.StreamResponse = await handler(request)
            return response

        async def models(request: web.Request) -> web.StreamResponse:
            data = [{"id": MODEL, "object": "model", "max_model_len": 4096}]
            return web.json_response({"object": "list", "data": data})

        async def version(request: web.Request) -> web.StreamResponse:
            return web.json_response({"version": "hostile"})

        async def health(request: web.Request) -> web.StreamResponse:
            return web.Response(status=200)

        app = web.Application(middlewares=[record])
        app.router.add_get("/v1/models", models)
        app.router.add_get("/version", version)
        app.router.add_get("/health", health)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[HostileServer]:
    server = HostileServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
