"""URLs in messages and logs."""

from __future__ import annotations


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs).

    Read as text, not with ``urlsplit``: a Sentinel URL lists several ``host:port`` pairs, which
    ``urlsplit`` cannot parse a port from."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or not password:
        return url
    return f"{scheme}{sep}{user}:***@{hosts}{tail}"
