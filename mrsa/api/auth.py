"""Bearer API keys. A key maps to an *owner*: a stable hash of the key, so the store (and its
backups, logs and metrics) never hold a key, and rotating the list of keys keeps each key's jobs.

With no keys configured auth is off: every caller is the one principal ``anonymous`` and sees every
job (including jobs made by ``mrsa solve --redis``)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mrsa.api.errors import ApiError

ANONYMOUS = "anonymous"

bearer = HTTPBearer(auto_error=False, description="An API key from MRSA_API_KEYS.")


def owner_of(key: str) -> str:
    """The owner id of an API key: a short SHA-256 of it (never the key itself)."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``owner`` is stored on the jobs it creates; ``sees_all`` when auth is off."""

    owner: str
    sees_all: bool = False

    def may_see(self, job_owner: str) -> bool:
        return self.sees_all or job_owner == self.owner


class KeyRing:
    """The configured keys, compared in constant time."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode("utf-8") for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, presented: str) -> bool:
        raw = presented.encode("utf-8")
        found = False
        for key in self._keys:  # no early exit: the time taken does not depend on which key matched
            found |= hmac.compare_digest(raw, key)
        return found


def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Principal:
    """The dependency every ``/v1`` route uses: 401 without a valid key when auth is on."""
    ring: KeyRing = request.app.state.keyring
    if not ring.enabled:
        return Principal(ANONYMOUS, sees_all=True)
    if credentials is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    if not ring.check(credentials.credentials):
        raise ApiError(401, "invalid API key", headers=_CHALLENGE)
    return Principal(owner_of(credentials.credentials))


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
