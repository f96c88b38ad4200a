"""A user's rate limit holds for the whole relay, whichever ingest worker takes a session."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

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
