#!/usr/bin/env python3
"""A broadcast of a million recipients: time to 202, the relay's peak RSS, delivery rate.

Starts smtp-sink on 127.0.0.2 and the relay (a temporary spool, relayhost on the sink),
streams `--recipients` recipients as NDJSON to POST /v1/broadcasts (generated on the fly,
never held in memory here either), waits for the 202, then lets the relay deliver for
`--deliver-seconds` and reports how many messages reached the sink per second. The rest of
the broadcast is cancelled and the relay stopped.

    python bench/broadcast_million.py [--recipients 1000000] [--deliver-seconds 30]

Needs smtp-sink (Debian package postfix); installs nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from relay_vs_postfix import (
    LOOPBACK,
    RelayUnderTest,
    SmtpSink,
    peak_rss_mb,
    wait_for_port,
)

TEMPLATE = {
    "from": "News <news@sender.bench>",
    "subject": "Hello {{name}}",
    "text": "Dear {{name}},\n\nyour code is {{code}}.\n",
    "html": "<p>Dear {{name}},</p><p>your code is <b>{{code}}</b>.</p>",
    "unsubscribe_url": "https://sender.bench/u?e={{email}}",
}


def ndjson(count: int) -> Iterator[bytes]:
    """The request body in pieces of about 64 KB."""
    yield json.dumps(TEMPLATE).encode() + b"\n"
    lines: list[bytes] = []
    for n in range(count):
        lines.append(b'{"email":"user%d@dest.bench","fields":{"name":"User %d","code":"%06d"}}\n'
                     % (n, n, n))
        if len(lines) == 800:
            yield b"".join(lines)
            lines = []
    if lines:
        yield b"".join(lines)


def request(port: int, token: str, method: str, path: str, body: object = None,
            content_type: str = "application/json") -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    if isinstance(body, Iterator):
        headers["Transfer-Encoding"] = "chunked"
        connection.request(method, path, body=body, headers=headers, encode_chunked=True)
    else:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read() or b"{}")
    connection.close()
    return response.status, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--deliver-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if shutil.which("smtp-sink") is None:
        print("missing: smtp-sink (Debian package postfix)", file=sys.stderr)
        return 2

    sink = SmtpSink()
    with tempfile.TemporaryDirectory(prefix="bench-broadcast-") as directory:
        relay = RelayUnderTest(sink.port, Path(directory))
        try:
            wait_for_port(LOOPBACK, relay.admin_port)
            token = (Path(directory) / "spool" / "admin.token").read_text().strip()
            started = time.monotonic()
            status, answer = request(relay.admin_port, token, "POST", "/v1/broadcasts",
                                     ndjson(args.recipients), "application/x-ndjson")
            accepted_after = time.monotonic() - started
            if status != 202:
                print(f"POST /v1/broadcasts: {status} {answer}", file=sys.stderr)
                return 1
            rss_at_202 = peak_rss_mb(relay.pids())
            before = sink.delivered
            time.sleep(args.deliver_seconds)
            delivered = sink.delivered - before
            rss = peak_rss_mb(relay.pids())
            broadcast_id = answer["id"]
            _, counts = request(relay.admin_port, token, "GET", f"/v1/broadcasts/{broadcast_id}")
            request(relay.admin_port, token, "POST", f"/v1/broadcasts/{broadcast_id}/cancel")
        finally:
            relay.stop()
            sink.stop()
    print(f"recipients submitted:   {args.recipients:,} as NDJSON")
    print(f"accepted (202) after:   {accepted_after:.1f} s "
          f"({args.recipients / accepted_after:,.0f} recipients/s)")
    print(f"accepted / rejected:    {answer['accepted']:,} / {answer['rejected_total']:,}")
    print(f"relay peak RSS:         {rss_at_202:.0f} MB at the 202, "
          f"{rss:.0f} MB after delivering")
    print(f"delivery to the sink:   {delivered / args.deliver_seconds:,.0f} messages/s "
          f"over {args.deliver_seconds:.0f} s ({delivered:,} messages)")
    print(f"status then:            {json.dumps(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
