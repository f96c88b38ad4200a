"""smtp.protocol: the SMTP protocol of the relay's listeners: aiosmtpd's SMTP (RFC 5321, ESMTP),
and the one module of the relay that touches aiosmtpd's private names.

aiosmtpd stays the SMTP server: its command parser, state machine and upstream fixes
(newline handling, STARTTLS) are why it is a dependency. What is changed here, each for a
measured reason (bench/README.md): every reply carries an enhanced status code (RFC 2034,
RFC 3463), a multi-line reply goes out in one write, the idle timer is moved rather than
remade for every command, commands and AUTH mechanisms are found once per class, the DATA
reader reads in large pieces (relay.smtp.data), AUTH (PLAIN, LOGIN; RFC 4954) is offered
and checked only under TLS and off the event loop (relay.smtp.auth), implicit TLS
(`tls_listen`) is recognised, and every session ends in one log line.

The private names used (`_reset_timeout`, `_timeout_handle`, `_timeout_duration`,
`_set_post_data_state`, `_call_handler_hook`, `_original_transport`, `_tls_protocol`,
`_smtp_methods`, `_auth_methods`, `_reader`, `_getaddr`, `_create_session`,
`_authenticate`, `_AuthMechAttr`, `sanitized_log`) are pinned in pyproject.toml to the
versions tested, and tests/unit/smtp/test_aiosmtpd_names.py fails when one of them disappears
or changes shape. What may be submitted is relay.smtp.submission's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    LoginPassword,
    Session,
    _AuthMechAttr,
    syntax,
)

from relay.core import reply
from relay.runtime.logsetup import log_value
from relay.smtp.anvil import ClientLimits
from relay.smtp.auth import AuthGuard
from relay.smtp.data import read_message
from relay.smtp.sessions import RelaySession, SessionRegistry, client_ip, refuse

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

    def __init__(self, handler: object, registry: SessionRegistry, auth: AuthGuard,
                 clients: ClientLimits, **kwargs: Any) -> None:
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
        self._auth = auth
        self._clients = clients
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

    def close_now(self) -> None:
        """Close without a word: a stop's time for open sessions ran out."""
        if self.transport is not None:
            self.transport.close()

    def _hang_up(self, why: reply.Reply) -> None:
        # (uvloop's transports are not registered as asyncio.WriteTransport)
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(f"{why}\r\n".encode())
            transport.close()

    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH exchange; the credentials it collects are checked here,
        asynchronously (relay.smtp.auth)."""
        session = self.session
        if (isinstance(session, RelaySession) and self._tls_protocol is not None
                and not session.authenticated and arg
                and await self._auth.locked_out(client_ip(session))):
            refuse(session, reply.AUTH_LOCKED_OUT)
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
                    client_ip(session), mechanism, name, session.auth_failures)
        if await self._auth.failed(client_ip(session), session.auth_failures):
            refuse(session, reply.AUTH_TOO_MANY_FAILURES)
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
                "duration=%.3fs%s", client_ip(session), log_value(session.host_name or "-"),
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
            refusal = await self._clients.connection_refused(client_ip(session))
            if refusal is not None:
                refuse(session, refusal)
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


_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's sanitized_log, which masks AUTH data with a regular expression before
    the logger decides; twice for every command line, both dropped (mail.log logs
    warnings only: relay.runtime.logsetup). Here the logger decides first."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None \
            and not logger.isEnabledFor(level):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log  # _handle_client looks it up on every call


