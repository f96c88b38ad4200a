"""The relay as a systemd service runs it: sd_notify, SIGHUP reload, SIGTERM under load,
and /metrics, against `relayctl serve` as a subprocess with two ingest workers."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from relay import config as config_module
from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_crash import MESSAGES, Load, _test_id
from tests.acceptance.test_relayctl import smtp_port
from tests.support.dns_server import DnsServer
from tests.support.process import relayctl
from tests.support.relayconf import write_access_policy
from tests.support.sink import Received, Sink

UNTRUSTED = "127.0.0.9"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on for a Type=notify service."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def _next_notification(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def _wait_for(sock: socket.socket, key: str) -> dict[str, str]:
    while True:
        message = _next_notification(sock)
        if key in message:
            return message


def test_sd_notify_ready_watchdog_reload_and_stopping(
        relay_process: MakeRelay, notify_socket: socket.socket) -> None:
    relay = relay_process()
    relay.start(env={"NOTIFY_SOCKET": notify_socket.getsockname(),
                     "WATCHDOG_USEC": "1000000"})
    assert _wait_for(notify_socket, "READY")["READY"] == "1"
    # READY=1 means it takes mail now: the port answers at once.
    with smtplib.SMTP("127.0.0.1", smtp_port(relay.config), timeout=10) as client:
        assert client.noop()[0] == 250
    assert _wait_for(notify_socket, "STATUS")["STATUS"].startswith("queue: 0 recipients")
    assert _wait_for(notify_socket, "WATCHDOG")["WATCHDOG"] == "1"

    assert relay.process is not None
    relay.process.send_signal(1)  # SIGHUP
    assert _wait_for(notify_socket, "RELOADING")["RELOADING"] == "1"
    assert _wait_for(notify_socket, "READY")["READY"] == "1"

    relay.process.send_signal(15)  # SIGTERM
    assert _wait_for(notify_socket, "STOPPING")["STOPPING"] == "1"
    assert relay.process.wait(30) == 0


def _rcpt_from_untrusted(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(UNTRUSTED, 0)) as client:
        client.ehlo("untrusted.test")
        client.mail("app@sender.test")
        return client.rcpt("someone@example.test")[0]


def test_sighup_changes_who_may_relay_and_a_broken_file_keeps_the_old_rules(
        relay_process: MakeRelay, tmp_path: Path) -> None:
    write_access_policy(tmp_path, 'trusted_networks = ["127.0.0.1/32"]\n')
    relay = relay_process(smtp={"workers": 2}).start()
    assert relay.process is not None
    port = smtp_port(relay.config)
    tries = 6  # several connections: the kernel spreads them over both workers
    assert {_rcpt_from_untrusted(port) for _ in range(tries)} == {554}

    write_access_policy(tmp_path, f'trusted_networks = ["127.0.0.1/32", "{UNTRUSTED}/32"]\n')
    relay.process.send_signal(1)
    relay.wait_for_lines("reloaded policies", count=3)  # the main process and two workers
    assert {_rcpt_from_untrusted(port) for _ in range(tries)} == {250}

    write_access_policy(tmp_path, "trusted_networks = [not toml\n")
    relay.process.send_signal(1)
    relay.wait_for_lines("reload failed, keeping the previous policies", count=3)
    assert {_rcpt_from_untrusted(port) for _ in range(tries)} == {250}
    assert relay.stop() == 0


def test_sigterm_under_load_delivers_every_acknowledged_message_after_restart(
        relay_process: MakeRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "451 4.3.0 Come back later"  # everything stays queued
    relay = relay_process().start()
    load = Load(smtp_port(relay.config))
    sender = threading.Thread(target=load.run)
    sender.start()
    assert load.enough.wait(120)
    assert relay.stop() == 0  # graceful: sessions end after their transaction
    sender.join(120)
    acked = set(load.acked)
    assert 0 < len(acked) < MESSAGES
    assert "still open after" not in relay.log()  # every session ended after a transaction

    sink.default_rcpt_reply = "250 2.1.5 Ok"  # the destination takes mail again
    relay.start()
    assert relayctl(relay.config, "queue", "flush", "--all").returncode == 0

    def all_acked_arrived(messages: list[Received]) -> bool:
        return acked <= {_test_id(m) for m in messages}

    sink.wait_until(all_acked_arrived, timeout=180)
    assert relay.stop() == 0


def _metrics(config_path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    config = config_module.load(config_path)
    token = config.admin_token_path.read_text().strip()
    request = urllib.request.Request(f"http://{config.admin.listen}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_what_was_sent(relay_process: MakeRelay, dns_server: DnsServer,
                                     make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("bounce.test", "A", "127.0.0.3")
    sink = make_sink("127.0.0.2")
    make_sink("127.0.0.3").default_rcpt_reply = "550 5.1.1 No such user"
    relay = relay_process().start()
    port = smtp_port(relay.config)
    sent = 5
    for number in range(sent):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("app@sender.test", ["a@example.test", "b@bounce.test"],
                            f"Subject: {number}\r\n\r\nbody\r\n")
    sink.wait_until(lambda messages: len(messages) >= sent, timeout=60)

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        # Workers report their sessions every few seconds; deliveries settle after the
        # sink's reply: read until the figures are in, as Prometheus would on its next scrape.
        deadline = time.monotonic() + 30
        while True:
            samples = _metrics(relay.config)
            sessions = sum(v for (name, _), v in samples.items()
                           if name == "relay_smtp_sessions_total")
            bounced = samples.get(("relay_delivery_outcomes_total",
                                   (("domain", "bounce.test"), ("result", "bounced"))), 0)
            if (sessions >= sent and bounced >= sent) or time.monotonic() > deadline:
                return samples
            time.sleep(0.2)

    samples = counted()
    # the messages and their DSNs (which go nowhere: the sender's domain is not in DNS)
    assert samples[("relay_messages_received_total", ())] == 2 * sent
    assert samples[("relay_delivery_outcomes_total",
                    (("domain", "example.test"), ("result", "delivered")))] == sent
    assert samples[("relay_delivery_outcomes_total",
                    (("domain", "bounce.test"), ("result", "bounced")))] == sent
    assert samples[("relay_delivery_latency_seconds_count", ())] == sent
    assert samples[("relay_smtp_sessions_total", (("tls", "no"),))] == sent
    assert samples[("relay_queue_recipients", (("state", "active"),))] >= 0
    assert samples[("relay_spool_free_bytes", ())] > 0
    assert relay.stop() == 0


def test_sighup_loads_a_renewed_certificate_without_dropping_sessions(
        relay_process: MakeRelay, tmp_path: Path, ca: trustme.CA) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"

    def issue(name: str) -> None:
        cert = ca.issue_cert(name, "127.0.0.1")
        cert.private_key_pem.write_to_path(str(key_path))
        cert.cert_chain_pems[0].write_to_path(str(cert_path))

    def served_name(port: int) -> str:
        context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            assert client.sock is not None
            peer = client.sock.getpeercert()  # type: ignore[attr-defined]
            return str(peer["subjectAltName"][0][1])  # trustme: the first name given

    issue("old.relay.test")
    relay = relay_process(smtp={"workers": 2, "tls_cert": str(cert_path),
                                "tls_key": str(key_path)}).start()
    assert relay.process is not None
    port = smtp_port(relay.config)
    assert served_name(port) == "old.relay.test"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as open_session:
        open_session.ehlo("client.test")
        issue("new.relay.test")
        relay.process.send_signal(1)
        relay.wait_for_lines("and the TLS certificate", count=3)
        assert {served_name(port) for _ in range(4)} == {"new.relay.test"}
        assert open_session.noop()[0] == 250  # the session from before the reload lives on

    cert_path.write_text("not a certificate")
    relay.process.send_signal(1)
    relay.wait_for_lines("reload failed", count=3)
    assert {served_name(port) for _ in range(4)} == {"new.relay.test"}
    assert relay.stop() == 0
