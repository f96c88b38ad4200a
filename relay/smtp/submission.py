"""submission: who may send what through the relay's SMTP listeners, as aiosmtpd's
handler hooks (MAIL, RCPT, DATA): the access policy, limits, and the hand-off to cleanup.

Who may relay: clients in `trusted_networks`, or users authenticated with AUTH PLAIN/LOGIN
(RFC 4954, only under TLS: relay.smtp.protocol). Everyone else gets 554 5.7.1 at RCPT: never an
open relay. The one exception is the bounce domain (`[bounces] domain`, relay.feedback):
mail for it comes from anyone, as bounces and complaints do, within relay.smtp.anvil's limits,
and is taken in, never sent on. Limits: SIZE (RFC 1870, 552 5.3.4), `max_recipients`
(452 4.5.3), free spool space (452 4.3.1), users' rate limits (451 4.7.0). A local failure
answers 451 4.3.0, never 5xx: clients treat 5xx as permanent. `250` is sent only after
the queue has the message on disk.
"""

from __future__ import annotations

import inspect as inspect_module
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.cleanup.cleanup import Cleanup, Origin, inspect_message
from relay.config import SmtpSection
from relay.core import reply
from relay.core.addresses import address_problem
from relay.core.errors import LocalFailure, Rejected
from relay.core.ratelimit import RateLimiter, SlidingWindow
from relay.policy import AccessPolicy, User
from relay.queue.base import domain_of
from relay.smtp.anvil import ClientLimits
from relay.smtp.auth import AuthGuard
from relay.smtp.sessions import RelaySession, client_ip, refuse

log = logging.getLogger("relay.smtpd")


@dataclass
class SubmissionHandler:
    """aiosmtpd hooks: access policy, limits, and hand-off to cleanup."""

    def __dir__(self) -> list[str]:
        # aiosmtpd lists the handler's hooks with dir()/getmembers() on every connection.
        return _HANDLER_HOOKS

    def __post_init__(self) -> None:
        self.handle_EHLO = _Presigned(self.handle_EHLO)  # type: ignore[method-assign,assignment]
        self.auth = AuthGuard(self.settings, self.access, self.rates)
        self.clients = ClientLimits(self.rates, self.access,
                                    self.settings.client_connection_rate,
                                    self.settings.client_message_rate)

    cleanup: Cleanup
    settings: SmtpSection
    access: Callable[[], AccessPolicy]  # the policy in force (swapped on reload)
    free_space: Callable[[], int | None] = lambda: None  # where mail is written, if known
    rates: RateLimiter = field(default_factory=SlidingWindow)
    bounce_domain: str = ""  # accepted from anyone (relay.feedback); "" for none

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        free = self.free_space()
        if free is not None and free < self.settings.min_free_space + _size_param(mail_options):
            log.warning("spool nearly full: refusing mail from [%s]", client_ip(session))
            return refuse(session, reply.SPOOL_FULL)
        problem = address_problem(address) if address != "<>" else None
        if problem is not None:
            return refuse(session, reply.bad_sender(problem))
        user = self._user(session)
        if session.authenticated and user is None:
            return refuse(session, reply.AUTH_REVOKED)  # the user left access.toml
        if user is not None:
            if address != "<>" and not user.may_send_as(address):
                return refuse(session, reply.SENDER_NOT_ALLOWED)
            rate = user.rate
            if rate is not None and not await self.rates.take(user.name, rate):
                return refuse(session, reply.RATE_LIMITED)
        else:
            refusal = await self.clients.message_refused(client_ip(session))
            if refusal is not None:
                return refuse(session, refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        problem = address_problem(address)
        if problem is not None:
            return refuse(session, reply.bad_recipient(problem))
        if not (session.authenticated or self._returns_here(address)
                or self.access().is_trusted(client_ip(session))):
            log.warning("relay denied client=[%s] to=<%s>", client_ip(session), address)
            return refuse(session, reply.RELAY_DENIED)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return str(reply.TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            inspected = inspect_message(data)
            user = self._user(session)
            if user is not None and not all(map(user.may_send_as, inspected.from_addresses)):
                raise Rejected(reply.SENDER_NOT_ALLOWED)
            mail_from = "" if envelope.mail_from == "<>" else str(envelope.mail_from)
            queue_id = await self.cleanup.submit(
                mail_from, list(envelope.rcpt_tos), data, self._origin(session),
                inspected=inspected, smtputf8="SMTPUTF8" in envelope.mail_options)
        except (Rejected, LocalFailure) as exc:
            return refuse(session, exc.reply)
        if isinstance(session, RelaySession):
            session.accepted += 1
        log.info("%s: client=[%s] from=<%s> size=%d nrcpt=%d", queue_id, client_ip(session),
                 mail_from, len(data), len(envelope.rcpt_tos))
        return reply.QUEUED.format(queue_id)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtpd: local error: %r", error, exc_info=error)
        return str(reply.LOCAL_ERROR)

    def _returns_here(self, address: str) -> bool:
        return bool(self.bounce_domain) and domain_of(address) == self.bounce_domain

    def _user(self, session: Session) -> User | None:
        if not session.authenticated or not isinstance(session, RelaySession):
            return None
        return self.access().user(session.user)

    def _origin(self, session: Session) -> Origin:
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl:
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        tls = session.tls_description if isinstance(session, RelaySession) else ""
        user = session.user if isinstance(session, RelaySession) else ""
        return Origin(protocol, client_ip(session), session.host_name or "", tls, user)


_HANDLER_HOOKS = [name for name in dir(SubmissionHandler) if name.startswith("handle_")]


class _Presigned:
    """A bound hook with its signature computed once. aiosmtpd reads handle_EHLO's
    signature on every connection, and for a bound method inspect.signature() builds a new
    one each time; for an object with `__signature__` it returns that as is."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method
        self.__signature__ = inspect_module.signature(method)

    def __call__(self, *args: Any) -> Any:
        return self._method(*args)


def _size_param(mail_options: list[str]) -> int:
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
