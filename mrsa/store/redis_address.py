"""Where the Redis store lives: a plain ``redis://`` / ``rediss://`` URL, or a Sentinel URL.

The Sentinel form names the Sentinels to ask and the master they watch, not a server::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[/<db>]

``user``/``password`` authenticate to the Redis master and its replicas (a Sentinel's own password,
when it has one, is ``MRSA_REDIS_SENTINEL_PASSWORD``); a host may be a name, an IPv4 address or a
bracketed IPv6 address; a missing port is Sentinel's default, 26379; ``db`` defaults to 0.
This module is the one place that reads such a URL (:func:`parse_redis_url`): the settings
validate ``MRSA_REDIS_URL`` with it and :mod:`mrsa.store.redis_clients` connects with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelAddress:
    """A parsed Sentinel URL: who to ask (``sentinels``), for which master, with which credentials."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> SentinelAddress | None:
    """The Sentinel address ``url`` names, or ``None`` for a plain Redis URL (redis-py reads those).

    Raises :class:`ValueError` saying which part of the URL is wrong (never echoing its password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"not a URL: expected {SENTINEL_SCHEME}://... or redis://..."
        )  # no echo: a password?
    scheme = scheme.lower()
    if scheme in PLAIN_SCHEMES:
        return None
    if scheme != SENTINEL_SCHEME:
        expected = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, SENTINEL_SCHEME))
        raise ValueError(f"unknown scheme {scheme!r}: expected one of {expected}")
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no query or fragment (set options through MRSA_* variables)")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    sentinels = tuple(_host_port(part) for part in hostlist.split(","))
    master, db = _master_and_db(path)
    return SentinelAddress(sentinels=sentinels, master=master, db=db, username=username, password=password)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:  # "user@": a name without a password, as redis-py reads redis://user@host
        return unquote(user) or None, None
    return unquote(user) or None, unquote(password) or None


def _host_port(part: str) -> tuple[str, int]:
    if not part:
        raise ValueError("Sentinel URL: empty host in the host list (expected host:port[,host:port...])")
    if part.startswith("["):
        host, bracket, after = part[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"Sentinel URL: bad IPv6 host {part!r} (expected [address]:port)")
        if after and not after.startswith(":"):
            raise ValueError(f"Sentinel URL: bad host {part!r} (expected [address]:port)")
        port_text = after[1:] if after else ""
    else:
        host, _, port_text = part.partition(":")
        if not host or "[" in host or "]" in host:
            raise ValueError(f"Sentinel URL: bad host {part!r} (expected host:port)")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"Sentinel URL: bad port in {part!r} (expected 1-65535)")
    return host, int(port_text)


def _master_and_db(path: str) -> tuple[str, int]:
    name, slash, db_text = path.partition("/")
    master = unquote(name)
    if not master:
        raise ValueError("Sentinel URL: no master name (expected .../<master-name>[/<db>])")
    if not slash or db_text in ("", "/"):
        return master, 0
    db_text = db_text.rstrip("/")
    if not db_text.isascii() or not db_text.isdigit():
        raise ValueError(f"Sentinel URL: bad database number {db_text!r} (expected an integer ≥ 0)")
    return master, int(db_text)
