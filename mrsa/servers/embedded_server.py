"""The embedded server's process: llama-cpp-python's OpenAI server, reporting its context.

``python -m llama_cpp.server`` answers ``GET /v1/models`` with ids only, so a client cannot learn the
context window and the API's context check had nothing to check against. This runs the same server
(same arguments, same app) with every ``/v1/models`` entry also carrying ``max_model_len`` — the
field vLLM reports, which :class:`~mrsa.backends.openai.OpenAICompatibleBackend` already reads.

Run as ``python -m mrsa.servers.embedded_server --model … --n_ctx …`` (what
:class:`~mrsa.servers.embedded.EmbeddedServer` starts); it needs the 'local' extra.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MODELS_PATH = "/v1/models"


def with_context(body: bytes, contexts: dict[str, int]) -> bytes:
    """A ``/v1/models`` reply with ``max_model_len`` added to each entry whose id is known."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return body
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") in contexts:
            entry.setdefault("max_model_len", contexts[entry["id"]])
    return json.dumps(data).encode()


class ReportContext:
    """ASGI middleware rewriting the ``GET /v1/models`` reply (see :func:`with_context`)."""

    def __init__(self, app: ASGIApp, contexts: dict[str, int]) -> None:
        self.app = app
        self.contexts = contexts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != MODELS_PATH:
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def buffered(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                body = with_context(body, self.contexts)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    # parse_model_from_args is annotated as returning the class; it returns an instance.
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = [cast(ModelSettings, parse_model_from_args(ModelSettings, args))]
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    contexts = {(m.model_alias or m.model): m.n_ctx for m in model_settings if m.n_ctx > 0}
    uvicorn.run(
        ReportContext(app, contexts),
        host=os.getenv("HOST", server_settings.host),
        port=int(os.getenv("PORT", str(server_settings.port))),
    )


if __name__ == "__main__":
    main()
