"""DKIM: messages signed by every key for their From: domain (RSA and Ed25519 at once),
verified by Perl's Mail::DKIM and by OpenDKIM's library against keys published in the
tests' DNS server."""

from __future__ import annotations

import asyncio
import ctypes.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from relay.delivery.dkim import dns_record, generate_key, public_key
from tests.integration.conftest import StartRelay
from tests.support.client import send
from tests.support.dns_server import DnsServer
from tests.support.sink import Received, Sink

VERIFIER = Path(__file__).parents[1] / "support" / "dkim_verify.pl"
OPENDKIM_VERIFIER = Path(__file__).parents[1] / "support" / "opendkim_verify.py"
OPENDKIM_DNS_HOST = "127.0.0.153"  # libopendkim asks /etc/resolv.conf's servers, on port 53


def _mail_dkim_missing() -> bool:
    if shutil.which("perl") is None:
        return True
    probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MCrypt::PK::Ed25519", "-e1"],
                           capture_output=True, check=False)
    return probe.returncode != 0


needs_mail_dkim = pytest.mark.skipif(_mail_dkim_missing(), reason="Mail::DKIM is not "
                                     "installed (Debian: libmail-dkim-perl libcryptx-perl)")


def _opendkim_unusable() -> str:
    """Why the OpenDKIM verifier cannot run here ("" when it can)."""
    if ctypes.util.find_library("opendkim") is None:
        return "libopendkim is not installed (Debian: libopendkim11)"
    if os.geteuid() != 0 or shutil.which("unshare") is None or subprocess.run(
            ["unshare", "--mount", "true"], capture_output=True, check=False).returncode:
        return "needs root and unshare: a DNS server on port 53 and a private /etc/resolv.conf"
    return ""


_OPENDKIM_UNUSABLE = _opendkim_unusable()
needs_opendkim = pytest.mark.skipif(bool(_OPENDKIM_UNUSABLE), reason=_OPENDKIM_UNUSABLE)


def publish_key(directory: Path, dns: DnsServer, domain: str, selector: str,
                algorithm: str) -> str:
    """Write a key under `directory`, publish it, and return its dkim.toml entry."""
    private = generate_key(algorithm)
    path = directory / f"{domain}.{selector}.key"
    path.write_bytes(private)
    record = dns_record(domain, selector, algorithm, public_key(private, algorithm))
    dns.add(f"{selector}._domainkey.{domain}", "TXT", record.split("( ", 1)[1].rstrip(" )"))
    return (f'[[keys]]\ndomain = "{domain}"\nselector = "{selector}"\n'
            f'private_key = "{path}"\nalgorithm = "{algorithm}"\n')


def write_dkim_policy(directory: Path, dns: DnsServer,
                      keys: list[tuple[str, str, str]]) -> None:
    """policies/dkim.toml with a published key for each (domain, selector, algorithm)."""
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "dkim.toml").write_text(
        "".join(publish_key(directory, dns, *key) for key in keys))


def _txt(dns: DnsServer, name: bytes) -> bytes:
    record = dns.records[name.decode().lower().rstrip(".")]["TXT"][0]
    return "".join(part.strip('"') for part in record.split('" "')).encode()


def verify(message: bytes, dns: DnsServer) -> list[str]:
    host, port = dns.address.rsplit(":", 1)
    return run_verifier(["perl", str(VERIFIER), host, port], message)


def run_verifier(command: list[str], message: bytes) -> list[str]:
    """The lines a verifier prints for `message` on its standard input."""
    result = subprocess.run(command, input=message, capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


async def relayed_with_keys(start_relay: StartRelay, dns: DnsServer,
                            make_sink: Callable[..., Sink], directory: Path,
                            keys: list[tuple[str, str, str]], body: str) -> Received:
    """`body` as it arrives at example.test's sink from a relay with published `keys`."""
    dns.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    write_dkim_policy(directory, dns, keys)
    relay = await start_relay()
    await send(relay.smtp_port, "bounce@sender.test", ["a@example.test"], body.encode())
    return (await asyncio.to_thread(sink.wait_for, 1))[0]


@needs_mail_dkim
async def test_dual_signatures_verify_independently(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    arrived = await relayed_with_keys(
        start_relay, dns_server, make_sink, tmp_path,
        [("sender.test", "rsa1", "rsa-sha256"), ("sender.test", "ed1", "ed25519-sha256"),
         ("other.test", "x1", "rsa-sha256")],
        "From: App <app@news.sender.test>\r\nTo: a@example.test\r\nSubject: signed\r\n"
        "\r\nHello,\r\n\r\n  spaces  and trailing blanks   \r\n.dot line\r\n")
    assert arrived.content.count(b"DKIM-Signature:") == 2  # not other.test's key
    lines = await asyncio.to_thread(verify, arrived.content, dns_server)
    assert "sender.test rsa-sha256 pass" in lines and lines[-1] == "result pass"
    # Debian's Mail::DKIM (1.20230212) does not verify Ed25519 yet: OpenDKIM does (the test
    # below), and dkimpy here, against the key the DNS server publishes.
    assert "sender.test ed25519-sha256 invalid (unsupported algorithm ed25519-sha256)" in lines
    signed = dkim.DKIM(arrived.content)
    assert all(signed.verify(idx=i, dnsfunc=lambda name, timeout=5: _txt(dns_server, name))
               for i in range(2))
    unfolded = arrived.content.replace(b"\r\n", b"").replace(b"\t", b"").replace(b" ", b"")
    assert b"h=from:from:" in unfolded  # From oversigned


def verify_with_opendkim(message: bytes, dns: DnsServer, directory: Path) -> list[str]:
    """libopendkim's verdict per signature, its keys looked up in a copy of `dns` on port 53
    that /etc/resolv.conf names inside a private mount namespace."""
    resolv = directory / "resolv.conf"
    resolv.write_text(f"nameserver {OPENDKIM_DNS_HOST}\noptions attempts:1 timeout:5\n")
    server = DnsServer(dns.records, host=OPENDKIM_DNS_HOST)
    try:
        server.start(port=53)
    except OSError as exc:
        server.stop()  # what did start
        pytest.skip(f"cannot listen on {OPENDKIM_DNS_HOST}:53: {exc}")
    try:
        return run_verifier(
            ["unshare", "--mount", "sh", "-c",
             'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', "sh", str(resolv),
             sys.executable, str(OPENDKIM_VERIFIER)], message)
    finally:
        server.stop()


@needs_opendkim
async def test_dual_signatures_verify_with_opendkim(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    arrived = (await relayed_with_keys(
        start_relay, dns_server, make_sink, tmp_path,
        [("sender.test", "ed1", "ed25519-sha256"), ("sender.test", "rsa1", "rsa-sha256")],
        "From: App <app@sender.test>\r\nTo: a@example.test\r\nSubject: caf\u00e9\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nHello\r\n\r\n\r\n")).content
    verdicts = await asyncio.to_thread(verify_with_opendkim, arrived, dns_server, tmp_path)
    assert sorted(verdicts) == ["sender.test ed1 ed25519-sha256 pass",
                                "sender.test rsa1 rsa-sha256 pass"]
    tampered = arrived.replace(b"Hello", b"Hullo")
    verdicts = await asyncio.to_thread(verify_with_opendkim, tampered, dns_server, tmp_path)
    assert [v.split(" ", 3)[3] for v in verdicts] == ["fail (signature verification failed)"] * 2


@needs_mail_dkim
async def test_a_broadcast_copy_is_signed_after_rendering(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    write_dkim_policy(tmp_path, dns_server, [("sender.test", "b1", "rsa-sha256")])
    relay = await start_relay()
    recipients = [{"email": f"r{n}@example.test", "fields": {"name": f"N\u00e9{n}"}}
                  for n in range(3)]
    answer = await relay.api("POST", "/v1/broadcasts", {
        "from": "News <news@sender.test>", "subject": "Hi {{name}}", "text": "Dear {{name}}",
        "recipients": recipients})
    assert answer["accepted"] == 3
    for received in await asyncio.to_thread(sink.wait_for, 3):
        assert (await asyncio.to_thread(verify, received.content, dns_server))[-1] == \
            "result pass"


async def test_a_missing_key_is_an_error_at_start(start_relay: StartRelay,
                                                  tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "dkim.toml").write_text(
        '[[keys]]\ndomain = "sender.test"\nselector = "s"\nprivate_key = "missing.pem"\n')
    with pytest.raises(Exception, match=r"keys\[0\]\.private_key: cannot use .*missing.pem"):
        await start_relay()


async def test_keys_reload_and_a_broken_key_keeps_the_old_ones(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    write_dkim_policy(tmp_path, dns_server, [("sender.test", "old", "rsa-sha256")])
    relay = await start_relay()

    async def selector_of_next_message() -> bytes:
        count = len(sink.messages) + 1
        await send(relay.smtp_port, "app@sender.test", ["a@example.test"],
                   b"From: app@sender.test\r\nSubject: s\r\n\r\nx\r\n")
        arrived = (await asyncio.to_thread(sink.wait_for, count))[-1].content
        unfolded = arrived.replace(b"\r\n", b"").replace(b"\t", b"").replace(b" ", b"")
        return unfolded.split(b"s=", 1)[1].split(b";", 1)[0]

    assert await selector_of_next_message() == b"old"
    write_dkim_policy(tmp_path, dns_server, [("sender.test", "new", "ed25519-sha256")])
    relay.relay.reload()  # what SIGHUP does
    assert await selector_of_next_message() == b"new"
    (tmp_path / "policies" / "dkim.toml").write_text(
        '[[keys]]\ndomain = "sender.test"\nselector = "gone"\nprivate_key = "gone.pem"\n')
    relay.relay.reload()
    assert await selector_of_next_message() == b"new"
