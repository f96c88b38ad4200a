"""Password guessing against the relay process (two ingest workers): failures in a session
are answered ever later and the third ends it with 421; failures from one address are
counted for the whole relay and then answered 454 without the password being looked at,
while another address still logs in."""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import pytest
import trustme

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import smtp_port
from tests.integration.test_submission import ACCESS_WITH_USER, client_tls
from tests.support.relayconf import write_access_policy


def plain(user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_guessing_is_slowed_cut_off_and_locked_out(
        relay_process: MakeRelay, tmp_path: Path, server_cert: tuple[str, str],
        ca: trustme.CA) -> None:
    write_access_policy(tmp_path, ACCESS_WITH_USER)
    cert, key = server_cert
    relay = relay_process(smtp={"tls_cert": cert, "tls_key": key,
                                "auth_failure_delay": "0.05s", "max_auth_failures": 3,
                                "auth_failure_limit": "5/10m"}).start()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def session(source: str) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", smtp_port(relay.config), timeout=30,
                              source_address=(source, 0))
        client.ehlo("guesser.test")
        client.starttls(context=client_tls(str(ca_file)))
        client.ehlo("guesser.test")
        return client

    first = session("127.0.0.9")
    replies = [first.docmd("AUTH", plain("app1", f"guess{n}")) for n in range(3)]
    assert [code for code, _ in replies] == [535, 535, 421]
    assert replies[2][1].startswith(b"4.7.0")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        first.noop()
    first.close()

    second = session("127.0.0.9")  # the address has 3 failures; 2 more reach the limit
    assert [second.docmd("AUTH", plain("nobody", "x"))[0] for _ in range(2)] == [535, 535]
    second.close()

    third = session("127.0.0.9")
    code, text = third.docmd("AUTH", plain("app1", "s3cret-pass"))  # right, but too late
    assert code == 454 and text.startswith(b"4.7.0")
    third.close()

    other = session("127.0.0.10")
    assert other.docmd("AUTH", plain("app1", "s3cret-pass"))[0] == 235
    other.close()
    challenged = session("127.0.0.10")  # AUTH LOGIN's challenge and response, as nodemailer
    challenged.user, challenged.password = "app1", "s3cret-pass"
    assert challenged.auth("LOGIN", challenged.auth_login)[0] == 235
    challenged.close()

    relay.wait_for_lines("auth failed", count=5)
    assert "Traceback" not in relay.log()
    assert relay.stop() == 0
