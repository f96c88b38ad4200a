"""PGP/MIME with real gpg: the test is the recipient, with its own keyring, and decrypts
what arrives; `required` without a key bounces, `if-available` sends in clear."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.delivery.pgp import import_keys
from tests.integration.conftest import StartRelay
from tests.support.client import send
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    result = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes",
                             "--pinentry-mode", "loopback", "--passphrase", "", *args],
                            input=data, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def recipient_key(home: Path, address: str) -> bytes:
    """A key pair in the recipient's own keyring; returns the public key, armored."""
    home.mkdir(mode=0o700)
    gpg(home, "--quick-gen-key", f"Recipient <{address}>", "future-default", "default",
        "never")
    return gpg(home, "--armor", "--export", address)


def write_pgp_policy(directory: Path, rules: str) -> Path:
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "pgp.toml").write_text(f'keyring = "gnupg"\n{rules}')
    return directory / "policies" / "gnupg"


ORIGINAL = ("From: app@sender.test\r\nTo: ann@partner.test\r\nSubject: secret plans\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "\r\nLine one \u00e9\r\n.leading dot\r\n\r\ntrailing spaces   \r\n").encode()


async def test_recipients_get_their_own_encrypted_copy(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    dns_server.add("partner.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    keyring = write_pgp_policy(tmp_path, '[[rules]]\nrecipients = ["@partner.test"]\n'
                                         'mode = "required"\n')
    ann_home, bob_home = tmp_path / "ann", tmp_path / "bob"
    import_keys(keyring, recipient_key(ann_home, "ann@partner.test"))
    import_keys(keyring, recipient_key(bob_home, "bob@partner.test"))
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["ann@partner.test", "bob@partner.test"],
               ORIGINAL)
    arrived = {m.rcpt_tos[0]: m for m in await asyncio.to_thread(sink.wait_for, 2)}
    assert sorted(arrived) == ["ann@partner.test", "bob@partner.test"]  # a copy each
    for address, home in (("ann@partner.test", ann_home), ("bob@partner.test", bob_home)):
        content = arrived[address].content
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert message.get_content_type() == "multipart/encrypted"
        assert message.get_param("protocol") == "application/pgp-encrypted"
        assert message["Subject"] == "secret plans" and b"Line one" not in content
        version, payload = message.iter_parts()
        assert version.get_content().strip() == b"Version: 1"
        decrypted = gpg(home, "--decrypt", data=payload.get_content())
        original_body = ORIGINAL.split(b"\r\n\r\n", 1)[1]
        assert decrypted == (b"Content-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Transfer-Encoding: 8bit\r\n\r\n" + original_body)


async def test_required_without_a_key_bounces_and_if_available_sends_in_clear(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dns_server.add("partner.test", "A", "127.0.0.2")
    dns_server.add("open.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    write_pgp_policy(tmp_path, '[[rules]]\nrecipients = ["@partner.test"]\nmode = "required"\n'
                               '[[rules]]\nrecipients = ["@open.test"]\n'
                               'mode = "if-available"\n')
    caplog.set_level(logging.INFO, logger="relay.delivery")
    relay = await start_relay()
    await send(relay.smtp_port, "", ["carol@partner.test", "dave@open.test"], ORIGINAL)
    arrived = (await asyncio.to_thread(sink.wait_for, 1))[0]
    assert arrived.rcpt_tos == ["dave@open.test"] and b"Line one" in arrived.content
    await relay.until_queue_empty()
    assert [m.rcpt_tos for m in sink.messages] == [["dave@open.test"]]
    bounced = [r.getMessage() for r in caplog.records if "carol@partner.test" in
               r.getMessage()]
    assert any("dsn=5.7.1, status=bounced" in line and "No valid PGP key" in line
               for line in bounced), bounced
