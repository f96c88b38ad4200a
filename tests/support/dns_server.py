"""A real DNS server on loopback (UDP and TCP), answering from a dict of records.

Records: {"example.test": {"MX": ["10 mx1.example.test."]}, "mx1.example.test":
{"A": ["127.0.0.2"]}}. Unknown names get NXDOMAIN; a known name without the asked type
gets an empty NOERROR answer; names in `servfail` get SERVFAIL.

Answers carry `ttl` (0 by default: a resolver that caches asks again each time, so a test
may change records as it goes), and negative ones an SOA of the name's parent zone whose
TTL and MINIMUM are `ttl`, so that they are cached as RFC 2308 says.
"""

from __future__ import annotations

import socketserver
import struct
import threading
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.net import free_port

Records = dict[str, dict[str, list[str]]]


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a fixed port (53) is bound again by the next test


class DnsServer:
    def __init__(self, records: Records | None = None, host: str = "127.0.0.1",
                 ttl: int = 0) -> None:
        self.records: Records = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        self.ttl = ttl
        self.servfail: set[str] = set()
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._servers: list[socketserver.BaseServer] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault(name.lower().rstrip("."), {}).setdefault(rdtype, []).extend(values)

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(question.name))
        elif rdtype in self.records[name]:
            response.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, dns.rdataclass.IN, rdtype, self.records[name][rdtype]))
        else:
            response.authority.append(self._soa(question.name))
        return response.to_wire()

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        zone = name.parent() if len(name) > 2 else name
        return dns.rrset.from_text(zone, self.ttl, dns.rdataclass.IN, "SOA",
                                   f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {self.ttl}")

    def asked(self, name: str, rdtype: str) -> int:
        """How many queries for `name` and `rdtype` came in."""
        return self.queries.count((name.lower().rstrip("."), rdtype))

    def start(self, port: int = 0) -> None:
        """Listen on `port` (53 for resolvers that cannot be told another), else a free one."""
        self.port = port or free_port([self.host])
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(server.answer(data), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                header = self.request.recv(2)
                if len(header) < 2:
                    return
                (length,) = struct.unpack("!H", header)
                data = b""
                while len(data) < length:
                    chunk = self.request.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = server.answer(data)
                self.request.sendall(struct.pack("!H", len(reply)) + reply)

        for cls, handler in ((socketserver.ThreadingUDPServer, Udp), (_TcpServer, Tcp)):
            instance: Any = cls((self.host, self.port), handler)
            instance.daemon_threads = True
            threading.Thread(target=instance.serve_forever, args=(0.05,), daemon=True).start()
            self._servers.append(instance)

    def stop(self) -> None:
        for instance in self._servers:
            instance.shutdown()
            instance.server_close()
        self._servers.clear()
