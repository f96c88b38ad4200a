"""smtpd: SMTP submission (RFC 5321, ESMTP) on aiosmtpd, for trusted applications.

Who may relay: clients in `trusted_networks`, or users authenticated with AUTH PLAIN/LOGIN
(RFC 4954), which is offered and accepted only under TLS (STARTTLS, RFC 3207, or implicit
TLS on `tls_listen`). Everyone else gets 554 5.7.1 at RCPT: never an open relay. The one
exception is the bounce domain (`[bounces] domain`, relay.feedback): mail for it comes
from anyone, as bounces and complaints do, and is taken in, never sent on.
Limits: SIZE (RFC 1870, 552 5.3.4), `max_recipients` (452 4.5.3), free spool space
(452 4.3.1). Every reply carries an enhanced status code (RFC 2034, RFC 3463).
A local failure answers 451 4.3.0, never 5xx: clients treat 5xx as permanent.
`250` is sent only after the queue has the message on disk.
"""

from __future__ import annotations

import asyncio
import inspect as inspect_module
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    _AuthMechAttr,
    syntax,
)

from relay import reply
from relay.addresses import address_problem
from relay.anvil import ClientLimits
from relay.cleanup import Cleanup, Origin, inspect
from relay.config import SmtpSection
from relay.errors import LocalFailure, Rejected
from relay.logsetup import log_value
from relay.policy import AccessPolicy, User
from relay.queue.base import domain_of
from relay.ratelimit import RateLimiter, SlidingWindow
from relay.smtpd_auth import AuthGuard

log = logging.getLogger("relay.smtpd")

_SIMPLE_PATH = re.compile(r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(.*)\Z")
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}")
# Enhanced codes for aiosmtpd's built-in replies, which have none.
_DEFAULT_ENHANCED = {
    221: "2.0.0", 235: "2.7.0", 250: "2.0.0", 251: "2.1.5", 252: "2.5.0", 220: "2.0.0",
    421: "4.3.2", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0",
    550: "5.0.0", 552: "5.3.4", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}


def with_enhanced_code(status: str) -> str:
    """Add a RFC 3463 code to a 2xx/4xx/5xx reply that lacks one."""
    if len(status) < 4 or not status[:3].isdigit() or status[0] not in "245":
        return status
    if _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3])
    enhanced = _DEFAULT_ENHANCED.get(code, f"{status[0]}.0.0")
    return f"{status[:4]}{enhanced} {status[4:]}"


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
        self._open: set[RelaySMTP] = set()
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

    def add(self, protocol: RelaySMTP) -> None:
        self._open.add(protocol)
        self._empty.clear()

    def discard(self, protocol: RelaySMTP) -> None:
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
                if protocol.transport is not None:
                    protocol.transport.close()


class RelaySMTP(SMTP):
    """aiosmtpd's protocol with enhanced codes on every reply, implicit TLS recognised,
    and one log line per session."""

    # The reader's buffer limit: smtp_DATA below reads the message in pieces of this size
    # (aiosmtpd's 1001 would mean an exception every KB), and long lines reach cleanup,
    # which answers 5.6.0, instead of aiosmtpd's bare "500 Line too long".
    line_length_limit = 64 * 1024
    _method_names: tuple[dict[str, str], dict[str, str]] | None = None

    def __dir__(self) -> list[str]:
        # While aiosmtpd's __init__ runs, it sees no methods: see __init__.
        return [] if self._hiding_methods else list(object.__dir__(self))

    @classmethod
    def _commands_and_mechanisms(cls) -> tuple[dict[str, str], dict[str, str]]:
        """{"EHLO": "smtp_EHLO", ...} and {"PLAIN": "auth_PLAIN", ...}, as aiosmtpd
        derives them, found once per class."""
        if cls._method_names is None:
            names = [n for n in dir(cls) if n.startswith(("smtp_", "auth_"))]
            commands = {n.removeprefix("smtp_"): n for n in names if n.startswith("smtp_")}
            mechanisms = {
                getattr(getattr(cls, n), "__auth_mechanism_name__",
                        n.removeprefix("auth_").replace("__", "-")): n
                for n in names if n.startswith("auth_")}
            cls._method_names = commands, mechanisms
        return cls._method_names

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Fast path for the usual `<local@domain> PARAMS`; anything else (quoted local
        # parts, source routes, UTF-8) goes through aiosmtpd's full RFC 5322 parser.
        match = _SIMPLE_PATH.match(arg)
        if match is not None:
            return match.group(1), match.group(2)
        return super()._getaddr(arg)

    def __init__(self, handler: SubmissionHandler, registry: SessionRegistry,
                 **kwargs: Any) -> None:
        # aiosmtpd's __init__ looks for the command and AUTH methods with dir(), getattr()
        # and inspect.getmembers() on every connection: 40% of a connection's set-up. The
        # names are the same for every connection, so they are found once per class
        # (_commands_and_mechanisms) and each connection only binds them.
        self._hiding_methods = True
        super().__init__(handler, **kwargs)
        self._hiding_methods = False
        commands, mechanisms = self._commands_and_mechanisms()
        self._smtp_methods = {command: getattr(self, name) for command, name in commands.items()}
        self._auth_methods = {mechanism: _AuthMechAttr(getattr(self, name), True)
                              for mechanism, name in mechanisms.items()}
        self._registry = registry
        self._auth = handler.auth
        self._clients = handler.clients
        self._greeted = False
        self._credentials: tuple[str, LoginPassword] | None = None  # AUTH, being checked
        self._plain_replies = True  # greeting, HELO/EHLO: no enhanced codes (RFC 2034)
        self._continued: list[str] = []  # the lines so far of a multi-line reply
        self._idle_deadline = 0.0  # loop time when an idle session is closed
        self._timed_out = False

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels its idle timer and makes a new one for every command; here the
        deadline moves and the timer stays, armed again for what is left if it fires
        early (bench/README.md)."""
        self._idle_deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or self._timed_out or handle.when() > self._idle_deadline:
            if handle is not None:
                handle.cancel()
            self._timed_out = False
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_deadline:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_timer)
        else:
            self._timed_out = True
            self._hang_up(reply.IDLE_TIMEOUT)  # said first, as Postfix's smtpd does

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    @property
    def idle(self) -> bool:
        """No mail transaction under way (none started, or the last one finished)."""
        return self.envelope is None or self.envelope.mail_from is None

    def say_goodbye(self) -> None:
        """421 and close: the relay is stopping (RFC 5321, 3.8)."""
        self._hang_up(reply.SHUTTING_DOWN)

    def _hang_up(self, why: reply.Reply) -> None:
        # (uvloop's transports are not registered as asyncio.WriteTransport)
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(f"{why}\r\n".encode())
            transport.close()

    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH exchange; the credentials it collects are checked here,
        asynchronously (relay.smtpd_auth)."""
        session = self.session
        if (isinstance(session, RelaySession) and self._tls_protocol is not None
                and not session.authenticated and arg
                and await self._auth.locked_out(_client_ip(session))):
            _refuse(session, reply.AUTH_LOCKED_OUT)
            await self.push(str(reply.AUTH_LOCKED_OUT))
            return
        self._credentials = None
        await super().smtp_AUTH(arg)
        credentials, self._credentials = self._credentials, None
        if credentials is None or not isinstance(session, RelaySession):
            return  # aiosmtpd has answered: a syntax error, or the client gave up
        mechanism, login = credentials
        name = login.login.decode("utf-8", "replace")
        if await self._auth.check(name, login.password.decode("utf-8", "replace")):
            session.authenticated = True
            session.auth_data = session.user = name
            await self.push(str(reply.AUTH_OK))
            return
        session.auth_failures += 1
        log.warning("auth failed client=[%s] mechanism=%s user=%s failures=%d",
                    _client_ip(session), mechanism, name, session.auth_failures)
        if await self._auth.failed(_client_ip(session), session.auth_failures):
            _refuse(session, reply.AUTH_TOO_MANY_FAILURES)
            await self.push(str(reply.AUTH_TOO_MANY_FAILURES))
            if self.transport is not None:
                self.transport.close()
            return
        await self.push(str(reply.AUTH_FAILED))

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd asks this synchronously; smtp_AUTH checks the credentials afterwards,
        # off the event loop. "handled": aiosmtpd answers nothing itself.
        if isinstance(auth_data, LoginPassword):
            self._credentials = (mechanism, auth_data)
        return AuthResult(success=False, handled=isinstance(auth_data, LoginPassword))

    async def smtp_MAIL(self, arg: str) -> None:
        if self._registry.closing:
            self.say_goodbye()
            return
        await super().smtp_MAIL(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        implicit_tls = (self._original_transport is None
                        and transport.get_extra_info("ssl_object") is not None)
        before_starttls = self.session
        super().connection_made(transport)
        self._registry.add(self)
        if isinstance(before_starttls, RelaySession) and isinstance(self.session, RelaySession):
            # STARTTLS starts a new SMTP session (RFC 3207) on the same connection: the log
            # line still covers the whole connection.
            self.session.started = before_starttls.started
            self.session.rejected = before_starttls.rejected
        if implicit_tls and self.session is not None:
            # aiosmtpd only knows STARTTLS; a TLS listener's sessions are encrypted from the
            # first byte, so AUTH must be offered there too.
            self._tls_protocol = transport  # type: ignore[assignment]
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    def connection_lost(self, error: Exception | None) -> None:
        session = self.session
        super().connection_lost(error)
        self._registry.discard(self)
        if isinstance(session, RelaySession):
            self._registry.ended(tls=bool(session.tls_description))
            # A client that ends with a reset instead of QUIT (common after TLS) is no error.
            failed = error is not None and not isinstance(error, ConnectionResetError)
            log.info(
                "session client=[%s] helo=%s tls=%s user=%s accepted=%d rejected=%d "
                "duration=%.3fs%s", _client_ip(session), log_value(session.host_name or "-"),
                log_value(session.tls_description or "none"), log_value(session.user or "-"),
                session.accepted, session.rejected, time.monotonic() - session.started,
                f" error={log_value(str(error))}" if failed else "")

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._plain_replies:
            status = with_enhanced_code(status)
        if isinstance(status, str) and status[3:4] == "-":
            # A multi-line reply (EHLO's) goes out in one write, as Postfix's does: one
            # segment, one wake-up of the client, instead of one per line.
            self._continued.append(status)
            return
        if self._continued:
            status = "\r\n".join([*self._continued, str(status)])
            self._continued.clear()
        session = self.session
        if not self._greeted and session is not None:  # the greeting: let in, or told why not
            self._greeted = True
            refusal = await self._clients.connection_refused(_client_ip(session))
            if refusal is not None:
                _refuse(session, refusal)
                self._hang_up(refusal)
                return
        await super().push(status)
        if isinstance(status, str) and status.startswith("220 ") and self._plain_replies:
            self._plain_replies = False  # the greeting went out

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large pieces instead of line by line
        (about 4x less CPU for a 100 KB message, bench/README.md)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_message(self._reader, self.data_size_limit)
        except asyncio.IncompleteReadError:
            return  # the client went away mid-message: nothing to acknowledge
        if content is None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(str(reply.MESSAGE_TOO_BIG))
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._unannotated(super().smtp_EHLO(hostname))

    async def smtp_HELO(self, hostname: str) -> None:
        await self._unannotated(super().smtp_HELO(hostname))

    async def _unannotated(self, command: Any) -> None:
        self._plain_replies = True
        try:
            await command
        finally:
            self._plain_replies = False


async def read_message(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """The message after DATA's 354 up to the lone "." line, dot-unstuffed (RFC 5321
    section 4.5.2); None when it is larger than `limit` (then it is read and dropped).
    Memory stays bounded by `limit` whatever the client sends."""
    buffer = bytearray(b"\r\n")  # DATA's own line end: the message starts a line
    size = 0
    too_big = False
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
            found = True
        except asyncio.LimitOverrunError as error:  # no ".\r\n" in a whole buffer
            piece = await reader.readexactly(error.consumed)
            found = False
        size += len(piece)
        buffer += piece
        if limit and size - 3 > limit:
            too_big = True
        if too_big:
            del buffer[:-5]  # keep only what recognises the end
        if found and buffer[-5:-3] == b"\r\n":  # the "." starts a line: the end
            break
    if too_big:
        return None
    content = bytes(buffer[2:-3]).replace(b"\r\n.", b"\r\n")
    return content[1:] if content.startswith(b".") else content


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
    free_space: Callable[[], int] | None = None
    rates: RateLimiter = field(default_factory=SlidingWindow)
    bounce_domain: str = ""  # accepted from anyone (relay.feedback); "" for none

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.free_space is not None:
            declared = _size_param(mail_options)
            if self.free_space() < self.settings.min_free_space + declared:
                log.warning("spool nearly full: refusing mail from [%s]", _client_ip(session))
                return _refuse(session, reply.SPOOL_FULL)
        problem = address_problem(address) if address != "<>" else None
        if problem is not None:
            return _refuse(session, reply.bad_sender(problem))
        user = self._user(session)
        if session.authenticated and user is None:
            return _refuse(session, reply.AUTH_REVOKED)  # the user left access.toml
        if user is not None:
            if address != "<>" and not user.may_send_as(address):
                return _refuse(session, reply.SENDER_NOT_ALLOWED)
            rate = user.rate
            if rate is not None and not await self.rates.take(user.name, rate):
                return _refuse(session, reply.RATE_LIMITED)
        else:
            refusal = await self.clients.message_refused(_client_ip(session))
            if refusal is not None:
                return _refuse(session, refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        problem = address_problem(address)
        if problem is not None:
            return _refuse(session, reply.bad_recipient(problem))
        if not (session.authenticated or self._returns_here(address)
                or self.access().is_trusted(_client_ip(session))):
            log.warning("relay denied client=[%s] to=<%s>", _client_ip(session), address)
            return _refuse(session, reply.RELAY_DENIED)
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return str(reply.TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            inspected = inspect(data)
            user = self._user(session)
            if user is not None and not all(map(user.may_send_as, inspected.from_addresses)):
                raise Rejected(reply.SENDER_NOT_ALLOWED)
            mail_from = "" if envelope.mail_from == "<>" else str(envelope.mail_from)
            queue_id = await self.cleanup.submit(
                mail_from, list(envelope.rcpt_tos), data, self._origin(session),
                inspected=inspected, smtputf8="SMTPUTF8" in envelope.mail_options)
        except (Rejected, LocalFailure) as exc:
            return _refuse(session, exc.reply)
        if isinstance(session, RelaySession):
            session.accepted += 1
        log.info("%s: client=[%s] from=<%s> size=%d nrcpt=%d", queue_id, _client_ip(session),
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
        return Origin(protocol, _client_ip(session), session.host_name or "", tls, user)


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


_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's sanitized_log, which masks AUTH data with a regular expression before
    the logger decides; twice for every command line, both dropped (mail.log logs
    warnings only: relay.logsetup). Here the logger decides first."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None \
            and not logger.isEnabledFor(level):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log  # _handle_client looks it up on every call


def _client_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _refuse(session: Session, refusal: reply.Reply) -> str:
    if isinstance(session, RelaySession):
        session.rejected += 1
    return str(refusal)


def _size_param(mail_options: list[str]) -> int:
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0
