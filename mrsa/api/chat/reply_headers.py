"""Which of a backend's reply headers a passthrough hands to its client: an allow-list.

The reply is served from the API's own origin — the console's — so a header the backend chose must
not act there: ``Set-Cookie`` would set a cookie for the console, ``Access-Control-*`` would open
it to other sites, ``WWW-Authenticate``/``Refresh``/``Location`` would steer the browser. Only what
describes the content and what OpenAI/vLLM clients read passes (the SDKs read ``x-request-id``,
``retry-after``/``retry-after-ms``, ``x-should-retry`` and the rate-limit headers); a header the
backend names in ``Connection`` is hop-by-hop even when it is on the list. ``Date`` and ``Server``
are this server's own. A body that is neither JSON nor server-sent events (an HTML error page, say)
is served sandboxed, so it cannot run script as the console's origin.
"""

from __future__ import annotations

from collections.abc import Iterable

# Exact names (lower case) and name prefixes that pass.
ALLOWED = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "x-request-id",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
    }
)
ALLOWED_PREFIXES = ("openai-", "x-ratelimit-")
# Framing and content headers kept once (a second, different value would make the reply ambiguous).
SINGLE = frozenset({b"content-type", b"content-length", b"content-encoding"})
SANDBOX = [(b"content-security-policy", b"sandbox")]
NOSNIFF = [(b"x-content-type-options", b"nosniff")]


def _connection_named(raw: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in ``Connection`` (hop-by-hop by the sender's own word)."""
    return {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }


def allowed(name: bytes) -> bool:
    lower = name.decode("latin-1").lower()
    return lower in ALLOWED or lower.startswith(ALLOWED_PREFIXES)


def media_type(raw: Iterable[tuple[bytes, bytes]]) -> str:
    """The reply's media type (lower case, no parameters); '' when it has none."""
    for name, value in raw:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return ""


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_event_stream(media: str) -> bool:
    return media == "text/event-stream"


def relayed_headers(raw: list[tuple[bytes, bytes]], *, keep_length: bool) -> list[tuple[bytes, bytes]]:
    """The headers of ``raw`` (the backend's, as received) the client gets, lower-cased, plus
    ``nosniff`` always and a sandbox for a body that is neither JSON nor an event stream.
    ``keep_length`` is False when the body is not relayed byte for byte as declared."""
    hop_by_hop = _connection_named(raw)
    kept: list[tuple[bytes, bytes]] = []
    seen: set[bytes] = set()
    for name, value in raw:
        lower = name.lower()
        if not allowed(name) or lower in hop_by_hop or (lower in SINGLE and lower in seen):
            continue
        if lower == b"content-length" and not keep_length:
            continue
        seen.add(lower)
        kept.append((lower, value))
    media = media_type(kept)
    extra = NOSNIFF if is_json(media) or is_event_stream(media) else NOSNIFF + SANDBOX
    return kept + extra
