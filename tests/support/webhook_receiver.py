"""A webhook receiver on loopback for tests: an HTTP server in a thread that checks every
request's signature with the `standardwebhooks` package (an implementation independent of
the relay's) and records what it got, by webhook id. It answers 500 while `failing`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class WebhookReceiver:
    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.verifier = Webhook(secret)
        self.failing = False
        self.bodies: dict[str, set[bytes]] = {}  # webhook-id: every body it came with
        self.requests = 0
        self.refused = 0  # answered 500
        self.bad_signatures = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request (a test killed it): nothing came
                receiver.received(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # A backlog for every request a relay may have in flight (the default is 5).
        ThreadingHTTPServer.request_queue_size = 128
        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def received(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            self.verifier.verify(body, headers)
            valid = True
        except WebhookVerificationError:
            valid = False
        with self._changed:
            self.requests += 1
            if not valid:
                self.bad_signatures += 1
                status = 401
            elif self.failing:
                self.refused += 1
                status = 500
            else:
                self.bodies.setdefault(headers["webhook-id"], set()).add(body)
                status = 204
            self._changed.notify_all()
        handler.send_response(status)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def events(self) -> list[dict[str, Any]]:
        """Each event received (once, whatever how often), by webhook id order of arrival."""
        with self._changed:
            return [json.loads(next(iter(bodies))) for bodies in self.bodies.values()]

    def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"webhook receiver: not seen in {timeout}s "
                                     f"({self.requests} requests, {len(self.bodies)} ids)")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
