"""console.sessions: who is signed in to the console.

Signing in with the admin token or an API key opens a session: a random id in an
HttpOnly, SameSite=Strict cookie, and in the queue its digest with the digest of the
token that signed in, which is checked again on every request (admin.callers), so a revoked
key ends its sessions within seconds. Each session has its own CSRF token, which every
form that changes something carries. Sessions are kept in the queue (queue.apikeys), so
every node of a cluster knows them and a restart keeps them; signing out ends one on
every node, and revoking a key ends every session it opened.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from relay.queue.apikeys import ConsoleSession, digest_of

Session = ConsoleSession  # the console's name for it

COOKIE = "relay_console"
LIFETIME = 8 * 3600.0  # seconds; a working day, then sign in again


class SessionStore(Protocol):
    """What the console needs of the queue for its sessions."""

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None: ...

    async def console_session(self, id_digest: str) -> Session | None: ...

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int: ...


class Sessions:
    def __init__(self, store: SessionStore, lifetime: float = LIFETIME) -> None:
        self._store = store
        self.lifetime = lifetime

    async def open(self, token: bytes) -> str:
        """A new session for whoever signed in with `token`: the cookie's value."""
        cookie = secrets.token_urlsafe(32)
        await self._store.open_console_session(digest_of(cookie), digest_of(token),
                                               secrets.token_urlsafe(32), self.lifetime)
        return cookie

    async def find(self, cookie: str) -> Session | None:
        return await self._store.console_session(digest_of(cookie))

    async def close(self, session: Session) -> None:
        await self._store.close_console_sessions(id_digest=session.id_digest)
