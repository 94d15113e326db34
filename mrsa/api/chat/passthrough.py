"""Chat requests that are not for RSA go to the backend as they came, as Zyphra's proxy does.

:func:`passthrough_reason` decides on the raw JSON body, before the request is validated as an
RSA request: a body with none of the RSA fields (our knobs other than OpenAI's own sampling fields,
``preset``, the proxy's fields and aliases, an ``rsa`` object), or with ``"rsa": false``, ``tools``,
``n`` > 1 or the proxy's ``rsa_t: 0`` is forwarded. :func:`forward` sends the body bytes unchanged
to the configured backend's ``/v1/chat/completions`` and answers with the backend's status, its
allowed headers (:mod:`mrsa.api.chat.reply_headers`) and its body relayed as it arrives, under the
passthrough limits (:mod:`mrsa.api.chat.relay`, :mod:`mrsa.api.chat.passthrough_slots`). mrsa's own API key
is checked and not forwarded (it is mrsa's, not the backend's); the router's affinity header
(``MRSA_BACKEND_ROUTING_HEADER``), when one is configured, is sent on as the client gave it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response

from mrsa.api.chat.proxy_fields import BY_NAME
from mrsa.api.chat.relay import RelayResponse
from mrsa.api.chat.reply_headers import is_event_stream, media_type, relayed_headers
from mrsa.api.deps import ApiDeps
from mrsa.api.errors import ApiError
from mrsa.params import RSAParams, knobs

log = logging.getLogger("mrsa.api")

# Knob names that are also OpenAI/vLLM request fields: on their own they do not ask for RSA.
OPENAI_NATIVE = frozenset({"temperature", "top_p", "top_k", "seed"})
RSA_FIELDS = frozenset(BY_NAME) | (frozenset(knobs(RSAParams)) - OPENAI_NATIVE) | {"preset"}
PASSTHROUGH_HEADER = "X-Mrsa-Passthrough"
# Request headers sent on; the rest (auth, cookies, hop-by-hop, encodings) stay here.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "x-request-id")


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


async def forward(request: Request, body: bytes, deps: ApiDeps, owner: str, reason: str) -> Response:
    """Send ``body`` to the backend's chat endpoint; its reply (any status) is the response,
    relayed as it arrives under the passthrough limits (:mod:`mrsa.api.chat.relay`)."""
    backend_url = deps.backend.url
    if backend_url is None:
        # A 4xx, not a 503: this server will never pass it through; the client can ask for RSA.
        raise ApiError(
            400,
            f"passthrough ({reason}): this API has no backend to pass the request to (MRSA_BACKEND_URL / "
            "--backend; for the embedded model the URL `mrsa backend` prints); add RSA fields "
            '(e.g. "preset") to run Markovian RSA',
        )
    url = f"{backend_url}/v1/chat/completions"  # the root: normalised where the handle was built
    forwarded = (*FORWARDED_REQUEST_HEADERS, *filter(None, [deps.backend.routing_header]))
    headers = {k: v for k in forwarded if (v := request.headers.get(k)) is not None}
    headers["accept-encoding"] = "identity"  # bytes back as the backend wrote them
    relay = deps.passthroughs.start(owner, url)  # 429/503 over the limits
    try:
        upstream = await relay.open(
            request.receive, httpx.Request("POST", url, content=body, headers=headers)
        )
    except ApiError as exc:
        await relay.aclose()
        raise ApiError(exc.status, f"passthrough ({reason}): {exc.message}") from None
    except BaseException:
        await relay.aclose()
        raise
    if upstream is None:  # the client left while the backend was still silent
        await relay.aclose()
        log.info("chat passthrough (%s): the client left before the backend answered", reason)
        return Response(status_code=499)
    log.info("chat completion passed through (%s): backend answered %s", reason, upstream.status_code)
    raw = list(upstream.headers.raw)
    declared = upstream.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > deps.passthroughs.limits.max_bytes:
        await relay.aclose()
        raise ApiError(
            502,
            f"passthrough ({reason}): the backend's reply of {length} bytes is larger than the passthrough "
            f"limit of {deps.passthroughs.limits.max_bytes} bytes (MRSA_API_PASSTHROUGH_MAX_BYTES)",
        )
    keep_length = length is not None and "transfer-encoding" not in upstream.headers
    reply_headers = relayed_headers(raw, keep_length=keep_length)
    reply_headers.append((PASSTHROUGH_HEADER.lower().encode(), reason.encode()))
    media = media_type(reply_headers)
    return RelayResponse(relay, upstream.status_code, reply_headers, event_stream=is_event_stream(media))
