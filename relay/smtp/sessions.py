"""smtp.sessions: one SMTP session as the relay records it (RelaySession: what its log
line reports), and the open sessions (SessionRegistry), so that a graceful stop can wait
for them and the metrics can count the ones that ended.

The registry knows a session's protocol only by what a stop needs of it (OpenSession);
the protocol itself is relay.smtp.protocol's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from aiosmtpd.smtp import Session

from relay.core import reply

log = logging.getLogger("relay.smtpd")


class OpenSession(Protocol):
    """What a graceful stop needs of an open session's protocol."""

    @property
    def idle(self) -> bool: ...

    def say_goodbye(self) -> None: ...

    def close_now(self) -> None: ...


class RelaySession(Session):
    """aiosmtpd's session plus what the per-session log line reports."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.started = time.monotonic()
        self.accepted = 0
        self.rejected = 0
        self.auth_failures = 0
        self.user = ""

    @property
    def tls_description(self) -> str:
        ssl_object = (self.ssl or {}).get("ssl_object")
        if ssl_object is None:
            return ""
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} with cipher {cipher[0] if cipher else 'unknown'}"


class SessionRegistry:
    """The open SMTP sessions, so a graceful stop can wait for them, and a tally of the
    sessions that ended (plain, TLS) for the metrics."""

    def __init__(self) -> None:
        self._open: set[OpenSession] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._ended = [0, 0]  # plain, TLS: since the last take_ended()
        self.closing = False  # the relay is stopping: no new transactions

    def alone(self) -> bool:
        """At most one session open."""
        return len(self._open) <= 1

    def ended(self, tls: bool) -> None:
        self._ended[tls] += 1

    def take_ended(self) -> tuple[int, int]:
        """Sessions (plain, TLS) that ended since the last call."""
        plain, tls = self._ended
        self._ended = [0, 0]
        return plain, tls

    def add(self, protocol: OpenSession) -> None:
        self._open.add(protocol)
        self._empty.clear()

    def discard(self, protocol: OpenSession) -> None:
        self._open.discard(protocol)
        if not self._open:
            self._empty.set()

    async def drain(self, timeout: float) -> None:
        """Stop taking mail: idle sessions hear 421 now, the others when their transaction
        is over (at their next MAIL), and whatever is still open after `timeout` is closed.
        A message is only ever cut off before its 250, so nothing acknowledged is lost."""
        self.closing = True
        for protocol in list(self._open):
            if protocol.idle:
                protocol.say_goodbye()
        if not self._open:
            return
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            log.warning("closing %d SMTP sessions still open after %.0fs",
                        len(self._open), timeout)
            for protocol in list(self._open):
                protocol.close_now()


def client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def refuse(session: Session, refusal: reply.Reply) -> str:
    if isinstance(session, RelaySession):
        session.rejected += 1
    return str(refusal)
