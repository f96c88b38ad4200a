"""An SMTP sink (aiosmtpd in a thread) on a loopback address, standing in for an MX host.

Per recipient it answers 250, or what `rcpt_replies` says ("451 4.2.0 try later",
"550 5.1.1 no such user"), or drops the connection for addresses in `drop_on_rcpt`.
Received messages are recorded; `wait_for(n)` blocks until n have arrived (no sleeps).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]
    tls: bool
    login: str | None  # the AUTH user, when the sink requires AUTH
    session_id: int  # id() of the SMTP session: equal ids mean a reused connection


class _Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        login, password = auth_data.login.decode(), auth_data.password.decode()
        if self.users.get(login) != password:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd handles pipelined commands; it just doesn't say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        sink = self.sink
        if address in sink.drop_on_rcpt:
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 dropping connection"
        answer = sink.rcpt_replies.get(address, sink.default_rcpt_reply)
        if answer.startswith("2"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        if sink.data_delay:
            await asyncio.sleep(sink.data_delay)
        if sink.data_gate is not None:
            with sink.arrived:
                sink.waiting_at_data += 1
                sink.arrived.notify_all()
            await asyncio.get_running_loop().run_in_executor(None, sink.data_gate.wait)
        if sink.data_reply.startswith("2"):
            with sink.arrived:
                null_sender = envelope.mail_from == "<>"
                sink.messages.append(Received(
                    "" if null_sender else str(envelope.mail_from), list(envelope.rcpt_tos),
                    envelope.original_content or b"", list(envelope.mail_options),
                    session.ssl is not None,
                    str(session.auth_data) if session.authenticated else None,
                    id(session)))
                sink.arrived.notify_all()
        return sink.data_reply


class _CountingController(Controller):
    """aiosmtpd's controller, telling the sink when sessions open and close."""

    def __init__(self, sink: Sink, *args: Any, **kwargs: Any) -> None:
        self._sink = sink
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        protocol = super().factory()
        sink, made, lost = self._sink, protocol.connection_made, protocol.connection_lost

        def connection_made(transport: asyncio.BaseTransport) -> None:
            sink.opened(id(protocol))
            made(transport)

        def connection_lost(error: Exception | None) -> None:
            sink.closed(id(protocol))
            lost(error)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol


class Sink:
    def __init__(self, host: str, port: int, tls_context: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None, smtputf8: bool = True,
                 pipelining: bool = True) -> None:
        self.host = host
        self.port = port
        self.rcpt_replies: dict[str, str] = {}
        self.default_rcpt_reply = "250 2.1.5 Ok"
        self.data_reply = "250 2.0.0 Ok: queued"
        self.drop_on_rcpt: set[str] = set()
        self.data_delay = 0.0  # seconds before answering DATA (keeps sessions open longer)
        self.data_gate: threading.Event | None = None  # set: DATA is answered from then on
        self.waiting_at_data = 0  # transactions that reached the gate
        self.max_concurrent = 0  # the most sessions open at once
        self._open: set[int] = set()
        self.pipelining = pipelining
        self.messages: list[Received] = []
        self.arrived = threading.Condition()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if tls_context is not None:
            kwargs["tls_context"] = tls_context
        if users is not None:  # AUTH required, and only under TLS
            kwargs.update(authenticator=_Authenticator(users), auth_required=True,
                          auth_require_tls=True)
        self._controller = _CountingController(self, _Handler(self), hostname=host, port=port,
                                               server_hostname="sink.test", **kwargs)

    def opened(self, session: int) -> None:
        with self.arrived:
            self._open.add(session)
            self.max_concurrent = max(self.max_concurrent, len(self._open))

    def closed(self, session: int) -> None:
        with self.arrived:
            self._open.discard(session)

    def start(self) -> Sink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait_until(self, predicate: Callable[[list[Received]], bool],
                   timeout: float = 60.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"sink {self.host}:{self.port}: condition not met with "
                                     f"{len(self.messages)} messages")
            return list(self.messages)

    def wait_at_gate(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` transactions wait for `data_gate`."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: self.waiting_at_data >= count, timeout):
                raise AssertionError(f"sink {self.host}:{self.port}: {self.waiting_at_data} "
                                     f"of {count} transactions reached DATA")

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(
                    f"sink {self.host}:{self.port} got {len(self.messages)} of {count} messages")
            return list(self.messages)
