"""Mail that comes back, taken by `relayctl serve` with its ingest workers on the
`[bounces] listen` port, survives a kill -9 right after its 250: the complaint is
recorded after the restart."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from typing import Any

from relay import config as config_module
from relay.cli.client import AdminClient
from tests.acceptance.conftest import MakeRelay
from tests.support.dns_server import DnsServer
from tests.support.feedback_reports import arf_report
from tests.support.net import free_port
from tests.support.process import relayctl
from tests.support.sink import Sink

BOUNCES = "bounces.test"


def until_event(admin: AdminClient, kind: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = admin.request("GET", f"/v1/events?type={kind}")["events"]
        if found:
            event: dict[str, Any] = found[0]
            return event
        assert time.monotonic() < deadline, f"no {kind} event within {timeout}s"
        time.sleep(0.05)


def test_a_complaint_acknowledged_before_a_kill_9_is_recorded_after_the_restart(
        relay_process: MakeRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    feedback_port = free_port()
    relay = relay_process(bounces={"domain": BOUNCES,
                                   "listen": [f"127.0.0.1:{feedback_port}"]}).start()
    admin = AdminClient.from_config(config_module.load(relay.config))
    sent = admin.request("POST", "/v1/messages", {
        "from": "news@sender.test", "to": ["ann@example.test"], "subject": "Offers",
        "text": "buy", "stream": "newsletter"})
    [copy] = sink.wait_for(1)
    assert copy.mail_from.startswith("b-")
    until_event(admin, "delivered")  # the complaint comes after (its return path is known)
    with smtplib.SMTP("127.0.0.1", feedback_port, timeout=30,
                      source_address=("127.0.0.6", 0)) as client:  # not a trusted client
        client.ehlo("fbl.provider.test")
        client.mail("fbl@provider.test")
        client.rcpt(f"fbl@{BOUNCES}")
        code, _ = client.data(arf_report(copy, BOUNCES))
        assert code == 250
    relay.kill()  # acknowledged: stored, perhaps not yet taken in
    relay.start()
    complained = until_event(admin, "complained")
    assert (complained["message_id"], complained["recipient"]) == (sent["id"],
                                                                   "ann@example.test")
    entries = admin.request("GET", "/v1/suppressions?stream=newsletter")["suppressions"]
    assert [e["address"] for e in entries] == ["ann@example.test"]
    shown = relayctl(relay.config, "events", "--type", "complained").stdout
    assert shown.count("\n") == 1 and "complained   <ann@example.test>" in shown
    assert "feedback type abuse" in shown
    assert relay.stop() == 0
    assert "Traceback" not in relay.log_path.read_text()
