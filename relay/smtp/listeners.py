"""listeners: the SMTP listening sockets and the TLS certificate they serve.

The main process binds every address at start (so a busy port is its error); with ingest
workers each worker binds its own SO_REUSEPORT sockets and the kernel spreads connections
over them. The main process binds without SO_REUSEPORT: that bind fails while any other
process listens on the address, so a second relay cannot join the first one's
SO_REUSEPORT group (any process of the same user could, and take part of its mail), yet
its own workers still can, since the main process's socket does not listen.
`ServerTls` holds the certificate and loads a renewed one on SIGHUP.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from relay.config import SmtpSection, split_hostport
from relay.core.errors import ConfigError, RelayError
from relay.runtime.portholders import who_listens
from relay.smtp.protocol import RelaySMTP
from relay.smtp.sessions import SessionRegistry
from relay.smtp.submission import SubmissionHandler


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The listeners' TLS context; ConfigError naming the key when the files are bad."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"smtp.tls_cert/tls_key: cannot load {cert}, {key}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


class ServerTls:
    """The listeners' TLS context, or None without a certificate. `reload` loads renewed
    files into the same context: new sessions get them, open ones are not touched."""

    def __init__(self, settings: SmtpSection) -> None:
        self._files = (settings.tls_cert, settings.tls_key)
        self.context = server_tls_context(*self._files) if all(self._files) else None

    def reload(self) -> None:
        """ConfigError, and the old certificate stays, when the new files do not load."""
        if self.context is not None:
            server_tls_context(*self._files)  # a broken pair must not half-replace the old
            self.context.load_cert_chain(*self._files)


@dataclass
class ListenSockets:
    """Bound listening sockets: `plain` offer STARTTLS (when a certificate is configured),
    `implicit_tls` speak TLS from the first byte."""

    plain: list[socket.socket]
    implicit_tls: list[socket.socket]

    def close(self) -> None:
        for sock in self.plain + self.implicit_tls:
            sock.close()


def bind_listeners(settings: SmtpSection, shared: bool = False, listen: bool = True,
                   more: list[str] | None = None) -> ListenSockets:
    """Bind `listen` and `tls_listen`, and `more` plain ones (`[bounces] listen`).
    `shared` (ingest workers): with SO_REUSEPORT, so that every worker listens on a socket
    of its own and the kernel spreads connections over them (one shared socket wakes
    every worker for every connection). The main process binds the same addresses
    without SO_REUSEPORT, and without listening when workers serve them: a port another
    process listens on is its clean error at start."""

    def bind(address: str) -> socket.socket:
        return bind_tcp(address, "smtp", reuse_port=shared, backlog=1024 if listen else None)

    return ListenSockets([bind(a) for a in settings.listen + (more or [])],
                         [bind(a) for a in settings.tls_listen])


def bind_tcp(address: str, service: str, reuse_port: bool = False,
             backlog: int | None = 128) -> socket.socket:
    """A TCP socket bound to `address` ("host:port"), listening unless `backlog` is None;
    a port that cannot be had is a RelayError naming the service and the address."""
    host, port = split_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets
    # whose protocol says TCP, and with Nagle every reply after a multi-line one waited
    # for the client's (delayed) ACK, up to 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if backlog is not None:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        others = who_listens(host, port) if exc.errno == errno.EADDRINUSE else []
        held = f"; {', '.join(others)} listens there" if others else ""
        raise RelayError(f"cannot start: {service} cannot listen on {address}: "
                         f"{exc.strerror or exc}{held}") from exc
    return sock


def check_alone(settings: SmtpSection, more: list[str], own: list[int]) -> None:
    """RelayError when a process other than `own` also listens on an SMTP address: one
    that bound it in the moment between the main process's bind and its workers'."""
    for address in settings.listen + settings.tls_listen + more:
        others = who_listens(*split_hostport(address), besides=own)
        if others:
            raise RelayError(f"cannot start: smtp cannot listen on {address}: "
                             f"{', '.join(others)} listens there too")


async def serve_listeners(handler: SubmissionHandler, settings: SmtpSection, hostname: str,
                          registry: SessionRegistry, sockets: ListenSockets, tls: ServerTls
                          ) -> list[asyncio.Server]:
    """Accept SMTP sessions on already bound sockets."""
    loop = asyncio.get_running_loop()

    def factory(starttls: ssl.SSLContext | None) -> Callable[[], RelaySMTP]:
        return lambda: RelaySMTP(
            handler, registry, handler.auth, handler.clients, hostname=hostname,
            ident="relay", tls_context=starttls,
            data_size_limit=settings.max_message_size, enable_SMTPUTF8=True,
            auth_require_tls=True,  # AUTH itself: RelaySMTP.smtp_AUTH
            timeout=settings.timeout, loop=loop)

    servers = [await loop.create_server(factory(tls.context), sock=sock)
               for sock in sockets.plain]
    servers += [await loop.create_server(factory(None), sock=sock, ssl=tls.context)
                for sock in sockets.implicit_tls]
    return servers
