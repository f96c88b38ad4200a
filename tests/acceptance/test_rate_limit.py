"""A user's rate limit holds for the whole relay, whichever ingest worker takes a session."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from relay.passwords import hash_password
from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import smtp_port
from tests.support.net import free_port
from tests.support.relayconf import write_access_policy

LIMIT = 4


def test_rate_limit_is_shared_by_the_ingest_workers(
        relay_process: MakeRelay, tmp_path: Path, server_cert: tuple[str, str],
        ca: trustme.CA) -> None:
    write_access_policy(tmp_path, f"""
trusted_networks = []
[[users]]
name = "app1"
password_hash = "{hash_password('pw-for-app1')}"
allowed_senders = ["@sender.test"]
rate_limit = "{LIMIT}/h"
""")
    cert, key = server_cert
    tls_port = free_port()
    relay = relay_process(smtp={"tls_cert": cert, "tls_key": key, "workers": 2,
                                "tls_listen": [f"127.0.0.1:{tls_port}"]}).start()
    assert smtp_port(relay.config)
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    replies = []
    for _ in range(LIMIT + 3):  # one connection each: the kernel spreads them over workers
        with smtplib.SMTP_SSL("127.0.0.1", tls_port, context=context, timeout=30) as client:
            client.login("app1", "pw-for-app1")
            replies.append(client.mail("app@sender.test"))
    codes = [code for code, _ in replies]
    assert codes == [250] * LIMIT + [451] * 3
    assert replies[-1][1].startswith(b"4.7.0")
    assert relay.stop() == 0


def test_untrusted_clients_of_the_bounce_listener_are_limited_per_address(
        relay_process: MakeRelay, tmp_path: Path) -> None:
    """Anvil: anyone may send to the bounce domain, but one address only so many
    connections (421 4.7.0 at the greeting) and messages (450 4.7.1 to MAIL) a window,
    counted for the whole relay whichever ingest worker takes the session; another
    address is not held back."""
    write_access_policy(tmp_path, "trusted_networks = []\n")
    bounce_port = free_port()
    relay = relay_process(
        smtp={"workers": 2, "client_connection_rate": "4/h", "client_message_rate": "2/h"},
        bounces={"domain": "bounces.test", "listen": [f"127.0.0.1:{bounce_port}"]}).start()

    def connect(source: str) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", bounce_port, timeout=30,
                              source_address=(source, 0))
        client.ehlo("remote.test")
        return client

    codes = []
    for _ in range(3):  # a connection each (three of the four), one message each
        with connect("127.0.0.7") as client:
            codes.append(client.mail("mailer-daemon@remote.test")[0])
    assert codes == [250, 250, 450]
    with connect("127.0.0.7") as client:  # the fourth connection
        code, text = client.mail("mailer-daemon@remote.test")
        assert (code, text[:5]) == (450, b"4.7.1")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect("127.0.0.7")  # the fifth: refused at the greeting
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.7.0 Too many connections")
    with connect("127.0.0.8") as other:
        assert other.mail("mailer-daemon@remote.test")[0] == 250
    relay.wait_for_lines("over its connection rate")
    assert relay.stop() == 0
