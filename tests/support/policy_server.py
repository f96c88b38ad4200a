"""A real HTTPS server on loopback that serves MTA-STS policies (RFC 8461 section 3.3).

`serve(host, body)` answers GET /.well-known/mta-sts.txt for Host `host` (the port is
ignored) with 200 text/plain; `answers[host]` may instead hold (status, content type,
body, extra headers). Every request is recorded as (Host, path, SNI name).
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

from tests.support.net import free_port

Answer = tuple[int, str, bytes, dict[str, str]]


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server-side context with a certificate for `names`, issued by `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


class PolicyServer:
    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._context = context
        self._server: ThreadingHTTPServer | None = None

    def serve(self, host: str, body: str) -> None:
        self.answers[host] = (200, "text/plain; charset=utf-8", body.encode(), {})

    def requests_for(self, host: str) -> int:
        return sum(1 for requested, _, _ in self.requests if requested == host)

    def start(self) -> PolicyServer:
        self.port = free_port([self.host])
        owner = self
        sni_names: dict[int, str | None] = {}

        def remember_sni(sock: ssl.SSLSocket, name: str | None, _: Any) -> None:
            sni_names[id(sock)] = name

        self._context.sni_callback = remember_sni

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "").rsplit(":", 1)[0]
                owner.requests.append((host, self.path, sni_names.get(id(self.connection))))
                status, content_type, body, extra = owner.answers.get(
                    host, (404, "text/plain", b"no policy here\n", {}))
                if self.path != "/.well-known/mta-sts.txt":
                    status, body = 404, b"not found\n"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads `requests` instead

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.socket = self._context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
