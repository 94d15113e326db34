"""Chat requests that are not for RSA go to the backend as they came, as Zyphra's proxy does.

:func:`passthrough_reason` decides on the raw JSON body, before the request is validated as an
RSA request: a body with none of the RSA fields (our knobs other than OpenAI's own sampling fields,
``preset``, the proxy's fields and aliases, an ``rsa`` object), or with ``"rsa": false``, ``tools``,
``n`` > 1 or the proxy's ``rsa_t: 0`` is forwarded. :func:`forward` sends the body bytes unchanged
to the configured backend's ``/v1/chat/completions`` and answers with the backend's status and
body, streamed chunk by chunk when the backend streams. mrsa's own API key is checked and not
forwarded (it is mrsa's, not the backend's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from mrsa.api.errors import ApiError
from mrsa.api.proxy_fields import BY_NAME
from mrsa.backends.http import backend_base_url
from mrsa.params import RSAParams, knobs

log = logging.getLogger("mrsa.api")

# Knob names that are also OpenAI/vLLM request fields: on their own they do not ask for RSA.
OPENAI_NATIVE = frozenset({"temperature", "top_p", "top_k", "seed"})
RSA_FIELDS = frozenset(BY_NAME) | (frozenset(knobs(RSAParams)) - OPENAI_NATIVE) | {"preset"}
PASSTHROUGH_HEADER = "X-Mrsa-Passthrough"
# Request headers sent on; the rest (auth, cookies, hop-by-hop, encodings) stay here.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "x-request-id")
# Reply headers not copied back: they describe this hop's framing, not the content.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "trailer",
    }
)
TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)


def parse_body(raw: bytes) -> Any:
    """The JSON body, or None when it is not JSON (the RSA route then reports the error)."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def passthrough_reason(payload: Any) -> str | None:
    """Why this chat body goes to the backend unchanged, or None when it is an RSA request."""
    if not isinstance(payload, dict):
        return None
    rsa = payload.get("rsa")
    if rsa is False:
        return "rsa: false"
    if payload.get("tools"):
        return "tools"
    n = payload.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        return "n > 1"
    fields = {**payload, **(rsa if isinstance(rsa, dict) else {})}
    if fields.get("rsa_t") == 0 and fields.get("rounds") is None:
        return "rsa_t: 0"
    if rsa is True or isinstance(rsa, dict) or any(name in RSA_FIELDS for name in fields):
        return None
    return "no RSA fields"


async def forward(request: Request, body: bytes, backend_url: str | None, reason: str) -> Response:
    """Send ``body`` to the backend's chat endpoint; its reply (any status) is the response."""
    if backend_url is None:
        # A 4xx, not a 503: this server will never pass it through; the client can ask for RSA.
        raise ApiError(
            400,
            f"passthrough ({reason}): this API has no backend to pass the request to (MRSA_BACKEND_URL / "
            "--backend; for the embedded model the URL `mrsa backend` prints); add RSA fields "
            '(e.g. "preset") to run Markovian RSA',
        )
    url = f"{backend_base_url(backend_url)}/v1/chat/completions"
    headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
    headers["accept-encoding"] = "identity"  # bytes back as the backend wrote them
    client = httpx.AsyncClient(timeout=TIMEOUT)
    try:
        upstream = await client.send(
            client.build_request("POST", url, content=body, headers=headers), stream=True
        )
    except httpx.HTTPError as exc:
        await client.aclose()
        raise ApiError(
            502, f"passthrough ({reason}): backend {url} did not answer: {type(exc).__name__}: {exc}"
        ) from None
    log.info("chat completion passed through (%s): backend answered %s", reason, upstream.status_code)
    reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    reply_headers[PASSTHROUGH_HEADER] = reason
    media_type = upstream.headers.get("content-type")
    if media_type is not None and media_type.startswith("text/event-stream"):
        return StreamingResponse(
            _relay(client, upstream),
            status_code=upstream.status_code,
            headers=reply_headers,
            media_type=media_type,
        )
    try:
        content = await upstream.aread()
    except httpx.HTTPError as exc:
        raise ApiError(
            502, f"passthrough ({reason}): backend {url} broke off: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        await upstream.aclose()
        await client.aclose()
    return Response(content, status_code=upstream.status_code, headers=reply_headers, media_type=media_type)


async def _relay(client: httpx.AsyncClient, upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The backend's stream as it arrives; closing it (the client left) closes the backend's."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:  # the backend broke off mid-stream: end ours, say why in the log
        log.warning("passthrough stream from the backend broke off: %s: %s", type(exc).__name__, exc)
    finally:
        await upstream.aclose()
        await client.aclose()
