"""The passthrough's pure parts: which reply headers pass, and event streams cut between events.
(The relay itself is tested through ``mrsa serve`` against the hostile backend:
tests/hostile/test_hostile_passthrough.py.)"""

from __future__ import annotations

from mrsa.api.chat.relay import EventFraming, error_event
from mrsa.api.chat.reply_headers import relayed_headers


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_only_allowed_headers_pass_lower_cased_with_nosniff() -> None:
    given = raw(
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("X-Request-Id", "r1"),
        ("OpenAI-Processing-Ms", "5"),
        ("X-RateLimit-Remaining-Tokens", "9"),
        ("Retry-After", "2"),
        ("Set-Cookie", "a=b"),
        ("Access-Control-Allow-Origin", "*"),
        ("Date", "today"),
        ("Server", "them"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
    )
    assert relayed_headers(given, keep_length=True) == raw(
        ("content-type", "application/json"),
        ("content-length", "12"),
        ("x-request-id", "r1"),
        ("openai-processing-ms", "5"),
        ("x-ratelimit-remaining-tokens", "9"),
        ("retry-after", "2"),
        ("x-content-type-options", "nosniff"),
    )
    assert (b"content-length", b"12") not in relayed_headers(given, keep_length=False)


def test_connection_named_headers_and_second_framing_values_are_dropped() -> None:
    given = raw(
        ("Connection", "keep-alive, X-Request-Id"),
        ("X-Request-Id", "hop"),
        ("Content-Type", "text/event-stream"),
        ("Content-Type", "text/html"),
    )
    assert relayed_headers(given, keep_length=True) == raw(
        ("content-type", "text/event-stream"), ("x-content-type-options", "nosniff")
    )


def test_bodies_other_than_json_and_event_streams_are_sandboxed() -> None:
    for media in ("text/html; charset=utf-8", "image/svg+xml", "application/octet-stream"):
        headers = dict(relayed_headers(raw(("Content-Type", media)), keep_length=False))
        assert headers[b"content-security-policy"] == b"sandbox", media
    assert b"content-security-policy" in dict(relayed_headers([], keep_length=False))  # no type at all
    for media in ("application/json", "application/problem+json", "text/event-stream"):
        headers = dict(relayed_headers(raw(("Content-Type", media)), keep_length=False))
        assert b"content-security-policy" not in headers, media


def test_event_framing_sends_whole_events_and_cuts_between_them() -> None:
    framing = EventFraming()
    assert framing.whole_events(b"data: 1\n\ndata: 2") == b"data: 1\n\n"
    assert framing.whole_events(b"2\n\ndata: 3\r\n\r\nda") == b"data: 22\n\ndata: 3\r\n\r\n"
    assert framing.rest() == b"da"
    events = b"data: 1\n\ndata: 2\n\n"
    assert EventFraming.cut(events, len(events) - 1) == b"data: 1\n\n"
    assert EventFraming.cut(events, 3) == b""
    # A partial event over the hold limit is sent as it is (memory stays bounded).
    big = b"data: " + b"x" * (EventFraming.HOLD_MAX + 1)
    assert EventFraming().whole_events(big) == big


def test_the_error_event_ends_any_half_written_event_first() -> None:
    event = error_event("the reply is larger than 5 bytes")
    assert event.startswith(b"\n\ndata: {") and event.endswith(b"}\n\n")
    assert b'"error": {"message": "passthrough cut short: the reply is larger than 5 bytes"' in event
