"""anvil: per-client limits for SMTP clients the relay does not trust, as Postfix's anvil
keeps them (smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit).

Anyone may connect to send to the bounce domain (relay.feedback): without a limit, one
address could open connections or send messages as fast as it likes. A client outside
`trusted_networks` may open `[smtp] client_connection_rate` connections per window
(beyond: `421 4.7.0` at the greeting, and the connection closes) and start
`[smtp] client_message_rate` mail transactions without AUTH (beyond: `450 4.7.1` to
MAIL). Trusted networks are exempt, as Postfix exempts $mynetworks; an authenticated
session is held to its user's own rate_limit instead. The counts are the relay's (the
main process's, or the cluster's database), not one ingest worker's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from relay.core import reply
from relay.core.ratelimit import RateLimiter
from relay.core.units import Rate
from relay.policy import AccessPolicy

log = logging.getLogger("relay.smtpd")


@dataclass(frozen=True)
class ClientLimits:
    rates: RateLimiter
    access: Callable[[], AccessPolicy]
    connection_rate: Rate | None
    message_rate: Rate | None

    async def connection_refused(self, client: str) -> reply.Reply | None:
        """At the greeting: None, or why this connection is refused."""
        return await self._refused(client, "connection", self.connection_rate,
                                   reply.CLIENT_CONNECTION_RATE)

    async def message_refused(self, client: str) -> reply.Reply | None:
        """At MAIL without AUTH: None, or why this transaction is refused."""
        return await self._refused(client, "message", self.message_rate,
                                   reply.CLIENT_MESSAGE_RATE)

    async def _refused(self, client: str, counted: str, rate: Rate | None,
                       refusal: reply.Reply) -> reply.Reply | None:
        """None where no limit applies (none is set, or the client is trusted) or the
        client is within it; else `refusal`, logged."""
        if rate is None or self.access().is_trusted(client):
            return None
        if await self.rates.take(f"anvil-{counted}:{client}", rate):
            return None
        log.warning("client=[%s] over its %s rate (%s): %s", client, counted, rate,
                    refusal.code)
        return refusal
