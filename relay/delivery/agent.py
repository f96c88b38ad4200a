"""delivery.agent: deliver one message to the recipients it has at one destination.

A DestinationSession is what one delivery worker holds for a destination (a recipient
domain, or the relayhost): the resolved next hops and an open connection that is reused
for the following messages. For each message it tries the hops in order, moving to the
next host on connection failures and 4xx before DATA (RFC 5321 section 5.1), and returns
one Attempt per recipient with the reply that decides its fate.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.config import DeliverySection
from relay.core import reply
from relay.core.errors import DeliveryError, Scope
from relay.core.reply import Reply
from relay.delivery.client import Credentials, SmtpConnection
from relay.delivery.hosts import HostLimits
from relay.delivery.mta_sts import Policy, StrictTransport
from relay.delivery.mx import Hop, NextHops
from relay.policy import DomainsPolicy
from relay.queue import Claimed

log = logging.getLogger("relay.delivery")

RELAYHOST = "[relayhost]"
MAX_TRANSACTIONS_PER_CONNECTION = 1000


@dataclass(frozen=True)
class Job:
    """One message for the recipients it has at one destination."""

    message_id: str
    mail_from: str
    received_at: float
    smtputf8: bool
    destination: str
    recipients: tuple[Claimed, ...]
    broadcast: str | None = None  # for a broadcast: its one recipient's fields (JSON)
    return_path: str = ""  # MAIL FROM when not mail_from: a VERP address (relay.feedback)
    verp: str = ""  # the token of that address

    @property
    def envelope_sender(self) -> str:
        return self.return_path or self.mail_from


@dataclass(frozen=True)
class Attempt:
    recipient: Claimed
    reply: Reply
    relay: str  # "host[address]:port", or "none" when no connection was made
    tls: str = ""  # the connection's TLS version; "" in the clear
    suppressed: bool = False  # not sent: the address is on its stream's suppression list
    unreachable: bool = False  # no host of the destination took a connection or greeted


class Transport(Protocol):
    """What a delivery worker holds for one destination."""

    async def deliver(self, job: Job, body: bytes) -> list[Attempt]: ...

    async def close(self) -> None: ...


class LocalTransport(Transport, Protocol):
    """A domain whose mail is taken in here, never sent on (the bounce domain,
    feedback.intake)."""

    @property
    def domain(self) -> str: ...


class DeliveryAgent:
    """What every destination session shares: settings, resolver, relayhost credentials."""

    def __init__(self, settings: DeliverySection, hostname: str, hops: NextHops,
                 credentials: Credentials | None = None,
                 domains: Callable[[], DomainsPolicy] = DomainsPolicy,
                 mta_sts: StrictTransport | None = None,
                 local: LocalTransport | None = None) -> None:
        self.settings = settings
        self.hostname = hostname
        self.hops = hops
        self.credentials = credentials
        self.domains = domains  # the shaping policy in force (policies/domains.toml)
        self.mta_sts = mta_sts
        self._local = local
        # Connections per MX host across every destination (delivery.hosts).
        self.hosts = HostLimits(wait=settings.connect_timeout,
                                dead_backoff=settings.dead_destination_backoff)

    def destination_of(self, domain: str) -> str:
        if self._local is not None and domain == self._local.domain:
            return domain  # not the relayhost's either
        return RELAYHOST if self.settings.relayhost else domain

    def session(self, destination: str) -> Transport:
        if self._local is not None and destination == self._local.domain:
            return self._local
        return DestinationSession(self, destination)


class DestinationSession:
    def __init__(self, agent: DeliveryAgent, destination: str) -> None:
        self._agent = agent
        self.destination = destination
        self._connection: SmtpConnection | None = None
        self._policy: Policy | None = None  # the MTA-STS policy of the hops in use

    async def deliver(self, job: Job, body: bytes) -> list[Attempt]:
        addresses = [r.address for r in job.recipients]
        try:
            connection, replies = await self._transact(job, addresses, body)
        except DeliveryError as exc:
            return [Attempt(r, exc.reply, exc.remote_host or "none",
                            unreachable=exc.unreachable) for r in job.recipients]
        relay, tls = str(connection.hop), connection.tls_version
        if any(answer.is_success for answer in replies.values()):
            self._agent.hosts.accepted(connection.hop.address)
        return [Attempt(r, replies[r.address], relay, tls) for r in job.recipients]

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.quit()
            self._connection = None

    async def _transact(self, job: Job, addresses: list[str],
                        body: bytes) -> tuple[SmtpConnection, dict[str, Reply]]:
        reused = self._connection
        if reused is not None and reused.is_open:
            self._agent.hosts.used(reused.hop.address, id(reused))
            try:
                replies = await reused.send(job.envelope_sender, addresses, body,
                                            job.smtputf8)
                self._keep(reused)
                return reused, replies
            except DeliveryError as exc:
                if exc.scope is not Scope.SITE:
                    raise
                # A cached connection that went stale: start over with fresh ones.
            await self.close()
        last_error: DeliveryError | None = None
        unreachable = True  # so far, every host failed to connect or greet
        for hop in await self._next_hops():
            try:
                connection = await self._open(hop)
            except DeliveryError as exc:
                log.info("%s: %s", job.message_id, exc.reply.text)
                last_error = exc
                unreachable = unreachable and exc.unreachable
                continue
            unreachable = False
            try:
                replies = await connection.send(job.envelope_sender, addresses, body,
                                                job.smtputf8)
            except DeliveryError as exc:
                connection.close()
                if exc.scope is not Scope.SITE:
                    raise
                last_error = exc
                continue
            self._keep(connection)
            return connection, replies
        if last_error is None:
            raise DeliveryError(reply.NO_ROUTE, Scope.SITE)
        raise DeliveryError(last_error.reply, last_error.scope, last_error.remote_host,
                            unreachable=unreachable)

    def _keep(self, connection: SmtpConnection) -> None:
        if connection.transactions >= MAX_TRANSACTIONS_PER_CONNECTION:
            connection.close()
            self._connection = None
        else:
            self._connection = connection
            self._agent.hosts.kept(connection.hop.address, id(connection), connection.close)

    async def _next_hops(self) -> list[Hop]:
        settings = self._agent.settings
        if self.destination == RELAYHOST:
            return await self._agent.hops.for_relayhost(settings.relayhost)
        hops = await self._agent.hops.for_domain(self.destination)
        strict = self._agent.mta_sts
        policy = self._policy = (await strict.policies.policy_for(self.destination)
                                 if strict is not None else None)
        if policy is None or policy.mode == "none":
            return hops
        allowed = [hop for hop in hops if policy.allows(hop.name)]
        if len(allowed) < len(hops):
            self._log_refused(policy, hops, allowed)
        if policy.mode == "testing":
            return hops
        if not allowed:
            raise DeliveryError(reply.MTA_STS_NO_MX, Scope.SITE)
        return allowed

    def _log_refused(self, policy: Policy, hops: list[Hop], allowed: list[Hop]) -> None:
        refused = sorted({hop.name for hop in hops} - {hop.name for hop in allowed})
        log.warning("mta-sts: %s: MX %s not in policy %s (mode %s, mx %s)%s",
                    self.destination, ",".join(refused), policy.id, policy.mode,
                    ",".join(policy.mx), ": used anyway" if policy.mode == "testing" else "")

    async def _open(self, hop: Hop) -> SmtpConnection:
        """A connection to `hop` within its host's limit (delivery.hosts)."""
        hosts = self._agent.hosts
        if hosts.dead(hop.address):
            raise DeliveryError(Reply(451, "4.4.1", f"connect to {hop}: not tried, it failed "
                                      "to answer several times in a row"), Scope.SITE,
                                str(hop), unreachable=True)
        if not await hosts.enter(hop.address):
            raise DeliveryError(Reply(451, "4.4.5", f"connect to {hop}: too many connections "
                                      "to the host already"), Scope.SITE, str(hop))
        try:
            connection = await self._open_entered(hop)
        except DeliveryError as exc:
            hosts.leave(hop.address)
            if exc.unreachable:
                hosts.unreachable(hop.address)
                raise
            hosts.reached(hop.address)  # it answered, if only to refuse
            if exc.reply.code == 421:  # at the greeting or EHLO: "too many connections"
                hosts.refused(hop.address, str(exc.reply))
            raise
        except BaseException:
            hosts.leave(hop.address)
            raise
        hosts.established(hop.address)
        connection.on_close = lambda: hosts.leave(hop.address, established=True,
                                                  connection=id(connection))
        return connection

    async def _open_entered(self, hop: Hop) -> SmtpConnection:
        policy, strict = self._policy, self._agent.mta_sts
        if policy is None or strict is None or policy.mode == "none":
            return await self._connect(hop, verify=None)
        if policy.mode == "enforce":
            return await self._connect(hop, verify=strict.trust)
        try:  # testing: learn what enforce would do, then deliver as usual (RFC 8461 sec. 5)
            return await self._connect(hop, verify=strict.trust)
        except DeliveryError as exc:
            if exc.reply.enhanced != "4.7.5":
                raise
            log.warning("mta-sts: %s: %s; policy %s is in testing mode: sent anyway",
                        self.destination, exc.reply.text, policy.id)
        return await self._connect(hop, verify=None)

    async def _connect(self, hop: Hop, verify: ssl.SSLContext | None) -> SmtpConnection:
        """With `verify`: STARTTLS and a certificate valid for the hop's name, or 4.7.5."""
        settings = self._agent.settings
        tls = settings.tls
        if self.destination != RELAYHOST:
            tls = self._agent.domains().rule_for(self.destination).tls or tls
        return await SmtpConnection.open(
            hop, self._agent.hostname, tls, settings.connect_timeout,
            settings.command_timeout,
            self._agent.credentials if self.destination == RELAYHOST else None,
            verify=verify)
