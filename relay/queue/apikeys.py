"""queue.apikeys: the admin API's keys, kept by the queue so that every node of a cluster
knows them. Only a digest of each key is stored (SHA-256: the keys are 32 random bytes,
nothing to guess, so a slow hash buys nothing); the key itself is shown once, when it is
made. A revoked key stays listed, refused.

The console's sessions are kept here too (console.sessions), so that a signed-in operator
stays signed in whichever node a load balancer picks, and after a restart: the digest of
the session's cookie, the digest of the token it signed in with (checked again on every
request), its CSRF token and when it expires. A database read reveals no cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ApiScope(StrEnum):
    SEND = "send"  # POST /v1/messages
    BROADCAST = "broadcast"  # create and cancel broadcasts
    READ = "read"  # the queue, histories, events, broadcasts' progress, metrics
    ADMIN = "admin"  # everything: queue operations, webhooks, suppressions, keys


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    digest: str  # SHA-256 of the whole key, hex
    scopes: tuple[ApiScope, ...]
    rate_limit: str  # "1000/h"; "" for none
    created_at: float
    revoked_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": [s.value for s in self.scopes],
                "rate_limit": self.rate_limit or None, "created_at": self.created_at,
                "revoked_at": self.revoked_at}


COLUMNS = "id, name, digest, scopes, rate_limit, created_at, revoked_at"


def digest_of(secret: str | bytes) -> str:
    """SHA-256, hex: what is stored of a key, a token or a console cookie."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def key_of(row: Sequence[Any]) -> ApiKey:
    return ApiKey(row[0], row[1], row[2], tuple(ApiScope(s) for s in json.loads(row[3])),
                  row[4], float(row[5]), None if row[6] is None else float(row[6]))


def key_values(key: ApiKey) -> tuple[Any, ...]:
    return (key.id, key.name, key.digest, json.dumps([s.value for s in key.scopes]),
            key.rate_limit, key.created_at, key.revoked_at)


@dataclass(frozen=True)
class ConsoleSession:
    id_digest: str  # SHA-256 of the cookie's value, hex
    token_digest: str  # of the admin token or API key it signed in with
    csrf: str  # every form that changes something carries it
    expires_at: float

    def checks(self, csrf: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), csrf.encode())


SESSION_COLUMNS = "id, token, csrf, expires_at"


def session_of(row: Sequence[Any]) -> ConsoleSession:
    return ConsoleSession(row[0], row[1], row[2], float(row[3]))
