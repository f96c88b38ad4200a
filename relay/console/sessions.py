"""console.sessions: who is signed in to the console.

Signing in with the admin token or an API key opens a session: a random id in an
HttpOnly, SameSite=Strict cookie, and on this side the token itself, checked again on
every request (admin.keys), so a revoked key ends its sessions within seconds. Each session
has its own CSRF token, which every form that changes something carries. Sessions live
in memory: a restart signs everybody out, which for a console is the safe way round.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "relay_console"
LIFETIME = 8 * 3600.0  # seconds; a working day, then sign in again
MAX_SESSIONS = 1000  # past this the oldest are dropped: sign-ins cannot grow it without end


@dataclass(frozen=True)
class Session:
    id: str
    token: bytes  # what signed in: checked again on every request
    csrf: str
    expires_at: float

    def checks(self, csrf: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), csrf.encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 lifetime: float = LIFETIME) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._open: dict[str, Session] = {}  # in order of opening

    def open(self, token: bytes) -> Session:
        self._drop_expired()
        while len(self._open) >= MAX_SESSIONS:
            del self._open[next(iter(self._open))]
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32),
                          self._clock() + self._lifetime)
        self._open[session.id] = session
        return session

    def find(self, session_id: str) -> Session | None:
        session = self._open.get(session_id)
        if session is not None and session.expires_at <= self._clock():
            del self._open[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    @property
    def lifetime(self) -> float:
        return self._lifetime

    def _drop_expired(self) -> None:
        now = self._clock()
        for session_id in [s.id for s in self._open.values() if s.expires_at <= now]:
            del self._open[session_id]
