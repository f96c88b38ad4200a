"""delivery.client: one SMTP client connection to a next hop, on aiosmtplib.

Opens the connection (greeting, EHLO, opportunistic or required STARTTLS per RFC 3207,
AUTH for a relayhost) and runs transactions on it: MAIL, one RCPT per recipient with its
own reply, DATA once for the accepted ones. Failures become DeliveryError with a scope:
SITE before DATA is sent (the caller may try the next host), MESSAGE for a whole
transaction, and per-recipient replies for RCPT.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from relay.config import DeliverySection, TlsMode
from relay.core import reply
from relay.core.addresses import address_problem
from relay.core.errors import ConfigError, DeliveryError, Scope
from relay.core.reply import Reply
from relay.delivery.mx import Hop
from relay.delivery.pipelining import ReplyReader

_LINE_END = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def relayhost_credentials(settings: DeliverySection) -> Credentials | None:
    """AUTH for the relayhost, the password read from its file (never from the config)."""
    if not settings.relayhost_username:
        return None
    if not settings.relayhost_password_file:
        raise ConfigError("delivery.relayhost_password_file: needed with relayhost_username")
    path = Path(settings.relayhost_password_file)
    try:
        password = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"delivery.relayhost_password_file: {path}: {exc.strerror}") from exc
    return Credentials(settings.relayhost_username, password)


def _unverified_tls() -> ssl.SSLContext:
    """Opportunistic TLS (RFC 7435): encrypt, but do not authenticate the server."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# One for every connection: a context loads the system's CA certificates when it is made.
_OPPORTUNISTIC = _unverified_tls()


class SmtpConnection:
    def __init__(self, hop: Hop, client: aiosmtplib.SMTP, command_timeout: float) -> None:
        self.hop = hop
        self._client = client
        self._timeout = command_timeout
        self._extensions = frozenset(client.esmtp_extensions)
        self.transactions = 0
        self.on_close: Callable[[], None] = lambda: None  # called once, when it closes
        # With PIPELINING the connection is ours from here on; aiosmtplib set it up.
        self._pipe = (ReplyReader(client.transport)
                      if "pipelining" in self._extensions and client.transport is not None
                      else None)

    @property
    def is_open(self) -> bool:
        return self._pipe.is_open if self._pipe is not None else self._client.is_connected

    def supports(self, extension: str) -> bool:
        return extension in self._extensions

    @property
    def tls_version(self) -> str:
        """"TLSv1.3" and the like; "" for a connection in the clear."""
        transport = self._client.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return str(ssl_object.version() or "") if ssl_object is not None else ""

    @classmethod
    async def open(cls, hop: Hop, local_hostname: str, tls_mode: TlsMode,
                   connect_timeout: float, command_timeout: float,
                   credentials: Credentials | None = None,
                   verify: ssl.SSLContext | None = None) -> SmtpConnection:
        """Connect, EHLO, STARTTLS as `tls_mode` says; with `verify`, STARTTLS is required
        and the certificate must be valid for the hop's name in that context (MTA-STS)."""
        client = aiosmtplib.SMTP(hostname=hop.address, port=hop.port,
                                 local_hostname=local_hostname, timeout=command_timeout,
                                 start_tls=False, validate_certs=False)
        try:
            await client.connect(timeout=connect_timeout)
        except aiosmtplib.SMTPResponseException as exc:  # it greeted, with a refusal
            client.close()
            raise _site_error(Reply.parse(exc.code, exc.message), hop) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            failure = Reply(451, "4.4.1", f"connect to {hop}: {connect_failure(exc)}")
            raise DeliveryError(failure, Scope.SITE, str(hop), unreachable=True) from exc
        try:
            await client.ehlo()
            wants_tls = verify is not None or tls_mode != "none"
            if wants_tls and client.supports_extension("starttls"):
                await client.starttls(tls_context=verify or _OPPORTUNISTIC,
                                      server_hostname=hop.name)
            elif verify is not None or tls_mode == "required":
                raise DeliveryError(reply.TLS_UNAVAILABLE, Scope.SITE, str(hop))
            if credentials is not None:
                await client.login(credentials.username, credentials.password)
        except DeliveryError:
            client.close()
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            # Our credentials were refused: defer and let the operator fix them.
            raise _site_error(Reply(454, "4.7.0", f"relayhost refused our AUTH: "
                                    f"{exc.code} {exc.message}"), hop) from exc
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise _site_error(Reply.parse(exc.code, exc.message), hop) from exc
        except ssl.SSLCertVerificationError as exc:
            client.close()
            refused = Reply(451, "4.7.5", f"certificate of {hop} not valid for {hop.name}: "
                                          f"{exc.verify_message}")
            raise _site_error(refused, hop) from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            client.close()
            failure = Reply(451, "4.4.1", f"connect to {hop}: {connect_failure(exc)}")
            raise _site_error(failure, hop) from exc
        return cls(hop, client, command_timeout)

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes,
                   smtputf8: bool) -> dict[str, Reply]:
        """One transaction; a reply for every recipient. Raises DeliveryError."""
        encoding = "utf-8" if smtputf8 else "ascii"
        # A recipient no RCPT command can carry is refused alone, like a remote 5xx to its
        # RCPT: its co-recipients are sent as usual.
        unsendable = {rcpt: refusal for rcpt in recipients
                      if (refusal := _unsendable(rcpt, encoding)) is not None}
        if unsendable:
            recipients = [rcpt for rcpt in recipients if rcpt not in unsendable]
            if not recipients:
                return unsendable
        self.transactions += 1
        options = self._mail_options(data, smtputf8)
        if self._pipe is not None:
            replies = await self._send_pipelined(self._pipe, mail_from, recipients, data,
                                                 options, encoding)
        else:
            replies = await self._send_step_by_step(mail_from, recipients, data, options,
                                                    encoding)
        return unsendable | replies

    async def _send_step_by_step(self, mail_from: str, recipients: Sequence[str],
                                 data: bytes, options: list[str],
                                 encoding: str) -> dict[str, Reply]:
        """MAIL, each RCPT and DATA, each waiting for its reply (no PIPELINING)."""
        await self._mail(mail_from, options, encoding)
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        for rcpt in recipients:
            try:
                response = await self._client.rcpt(rcpt, encoding=encoding)
                accepted.append(rcpt)
                replies[rcpt] = Reply.parse(response.code, response.message)
            except aiosmtplib.SMTPRecipientRefused as exc:
                replies[rcpt] = Reply.parse(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                self.close()
                raise _site_error(_connection_reply(self.hop, exc), self.hop) from exc
        if not accepted:
            await self._reset()
            return replies
        final = await self._data(data)
        replies.update({rcpt: final for rcpt in accepted})
        return replies

    def _mail_options(self, data: bytes, smtputf8: bool) -> list[str]:
        options = []
        if smtputf8:
            if not self.supports("smtputf8"):
                raise DeliveryError(reply.SMTPUTF8_UNSUPPORTED, Scope.MESSAGE, str(self.hop))
            options.append("SMTPUTF8")
        if self.supports("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        if self.supports("size"):
            options.append(f"SIZE={len(data)}")
        return options

    async def _send_pipelined(self, pipe: ReplyReader, mail_from: str,
                              recipients: Sequence[str], data: bytes, options: list[str],
                              encoding: str) -> dict[str, Reply]:
        """MAIL, every RCPT and DATA in one write (RFC 2920), then the message."""
        commands = [_command("MAIL FROM:", mail_from, options, encoding)]
        commands += [_command("RCPT TO:", rcpt, [], encoding) for rcpt in recipients]
        try:
            pipe.write(b"".join(commands) + b"DATA\r\n")
            mail = await pipe.next(self._timeout)
            rcpt_replies = [await pipe.next(self._timeout) for _ in recipients]
            go_ahead = await pipe.next(self._timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise _site_error(_connection_reply(self.hop, exc), self.hop) from exc
        accepted = [r for r, answer in zip(recipients, rcpt_replies, strict=True)
                    if answer.is_success]
        if not mail.is_success or not accepted or go_ahead.code != 354:
            await self._abandon(pipe, go_ahead)
            if not mail.is_success:
                scope = Scope.MESSAGE if mail.is_permanent else Scope.SITE
                raise DeliveryError(mail, scope, str(self.hop))
            replies = dict(zip(recipients, rcpt_replies, strict=True))
            replies.update({rcpt: go_ahead for rcpt in accepted})  # DATA refused
            return replies
        try:
            pipe.write(wire_format(data))
            final = await pipe.next(self._timeout)
        except (OSError, TimeoutError) as exc:
            # The message may or may not have arrived: defer (at-least-once), no next host.
            self.close()
            raise DeliveryError(_connection_reply(self.hop, exc, "while sending the message"),
                                Scope.MESSAGE, str(self.hop)) from exc
        if not final.is_success:
            await self._abandon(pipe, final)
        replies = dict(zip(recipients, rcpt_replies, strict=True))
        replies.update({rcpt: final for rcpt in accepted})
        return replies

    async def _abandon(self, pipe: ReplyReader, last: Reply) -> None:
        """End a failed transaction: an empty message if DATA was let through (RFC 2920
        section 3.1), then RSET; a connection that cannot do that is closed."""
        try:
            if last.code == 354:
                pipe.write(b".\r\n")
                await pipe.next(self._timeout)
            pipe.write(b"RSET\r\n")
            await pipe.next(self._timeout)
        except (OSError, TimeoutError):
            self.close()

    async def _mail(self, mail_from: str, options: list[str], encoding: str) -> None:
        try:
            await self._client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset()
            refused = Reply.parse(exc.code, exc.message)
            scope = Scope.MESSAGE if refused.is_permanent else Scope.SITE
            raise DeliveryError(refused, scope, str(self.hop)) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.close()
            raise _site_error(_connection_reply(self.hop, exc), self.hop) from exc

    async def _data(self, data: bytes) -> Reply:
        """DATA and the message: the reply that applies to every accepted recipient."""
        client = self._client
        try:
            go_ahead = await client.execute_command(b"DATA")
            if go_ahead.code != 354:
                raise aiosmtplib.SMTPDataError(go_ahead.code, go_ahead.message)
            # aiosmtplib's data() re-encodes the message with regexes, which cost more than
            # the rest of the transaction for a 100 KB message (bench/README.md).
            assert client.protocol is not None
            client.protocol.write(wire_format(data))
            response = await client.protocol.read_response(timeout=client.timeout)
            if response.code != 250:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
            return Reply.parse(response.code, response.message)
        except aiosmtplib.SMTPDataError as exc:
            await self._reset()
            return Reply.parse(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError, AssertionError) as exc:
            # The message may or may not have arrived: defer (at-least-once), no next host.
            self.close()
            raise DeliveryError(_connection_reply(self.hop, exc, "while sending the message"),
                                Scope.MESSAGE, str(self.hop)) from exc

    async def _reset(self) -> None:
        try:
            await self._client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.close()

    async def quit(self) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if self._pipe is not None:
                self._pipe.write(b"QUIT\r\n")
                await self._pipe.next(self._timeout)
            else:
                await self._client.quit()
        self.close()

    def close(self) -> None:
        self._client.close()
        on_close, self.on_close = self.on_close, lambda: None
        on_close()


def _unsendable(address: str, encoding: str) -> Reply | None:
    """Why no SMTP command can carry `address` (queued before addresses were checked at
    submission, or non-ASCII without SMTPUTF8), or None."""
    problem = address_problem(address)
    if problem is not None:
        return Reply(553, "5.1.3", f"invalid address: {problem}")
    try:
        address.encode(encoding)
    except UnicodeEncodeError:
        return reply.SMTPUTF8_UNSUPPORTED
    return None


def _command(verb: str, address: str, options: list[str], encoding: str) -> bytes:
    """A MAIL or RCPT command; the sender is checked like recipients (_unsendable), and a
    bad one fails the whole transaction."""
    refusal = _unsendable(address, encoding) if address else None
    if refusal is not None:
        raise DeliveryError(refusal, Scope.MESSAGE)
    return " ".join([f"{verb}<{address}>", *options]).encode(encoding) + b"\r\n"


def wire_format(data: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, dot-stuffed, ending in CRLF.CRLF
    (RFC 5321 sections 2.3.8 and 4.5.2)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:  # bare CR or LF: rare
        data = _LINE_END.sub(b"\r\n", data)
    data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _site_error(failure: Reply, hop: Hop) -> DeliveryError:
    return DeliveryError(failure, Scope.SITE, str(hop))


def _connection_reply(hop: Hop, exc: BaseException, doing: str = "") -> Reply:
    what = str(exc) or type(exc).__name__
    where = f"{doing} " if doing else ""
    return Reply(451, "4.4.2", f"lost connection with {hop} {where}({what})".replace("  ", " "))


def connect_failure(exc: BaseException) -> str:
    """Why a connection (or its greeting, EHLO or TLS handshake) failed, said once and
    the way Postfix says it: "Connection refused", not the library's wrapping of the
    socket error's wrapping."""
    cause = exc.__cause__ if isinstance(exc, aiosmtplib.SMTPConnectError) else None
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
        greeting = isinstance(exc.__cause__, aiosmtplib.SMTPTimeoutError)
        return ("timed out while receiving the initial server greeting" if greeting
                else "Connection timed out")
    if isinstance(cause, aiosmtplib.SMTPServerDisconnected):
        return "lost connection while receiving the initial server greeting"
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.strerror or exc.reason or exc}"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "lost connection during the EHLO or STARTTLS exchange"
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return "conversation timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
