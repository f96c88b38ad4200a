"""relayctl against a running relay (a subprocess): queue commands, flush, restart."""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from relay import config as config_module
from relay.config import split_hostport
from relay.notify.webhooks import new_secret
from tests.acceptance.conftest import MakeRelay
from tests.support.client import message, send_blocking
from tests.support.dns_server import DnsServer
from tests.support.policy_server import PolicyServer, server_context
from tests.support.process import RelayProcess, relayctl, relayctl_path
from tests.support.relayconf import write_relay_config
from tests.support.sink import Sink
from tests.support.webhook_receiver import WebhookReceiver


def smtp_port(config: Path) -> int:
    return split_hostport(config_module.load(config).smtp.listen[0])[1]


def queue_json(config: Path, *args: str) -> list[dict]:  # type: ignore[type-arg]
    result = relayctl(config, "queue", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_4xx_then_relayctl_flush_delivers(relay_process: MakeRelay, dns_server: DnsServer,
                                          make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["ann@example.test"] = "451 4.2.0 greylisted"
    relay = relay_process().start()
    send_blocking(smtp_port(relay.config), "app@sender.test", ["ann@example.test"], message())
    until(lambda: [r["state"] for m in queue_json(relay.config)
                   for r in m["recipients"]] == ["deferred"], "the deferral")

    listing = relayctl(relay.config, "queue", "list")
    assert "451 4.2.0 greylisted" in listing.stdout and "ann@example.test" in listing.stdout
    assert "-- 1 Kbytes in 1 Request." in listing.stdout
    assert queue_json(relay.config, "--state", "deferred")
    assert queue_json(relay.config, "--state", "held") == []

    [queued] = queue_json(relay.config)
    del sink.rcpt_replies["ann@example.test"]
    flushed = relayctl(relay.config, "queue", "flush", "--all")
    assert flushed.returncode == 0 and flushed.stdout == "1 recipient scheduled for delivery\n"
    sink.wait_for(1)
    until(lambda: queue_json(relay.config) == [], "an empty queue")
    assert relayctl(relay.config, "queue", "list").stdout.strip() == "Mail queue is empty"

    # What happened stays known after the message left the queue.
    history = relayctl(relay.config, "queue", "history", queued["id"])
    assert history.returncode == 0, history.stderr
    assert "left" in history.stdout.splitlines()[0]
    assert re.findall(r"  (accepted|deferred|requeued|delivered) ", history.stdout) == [
        "accepted", "deferred", "requeued", "delivered"]
    assert "(451 4.2.0 greylisted)" in history.stdout
    listed = relayctl(relay.config, "events", "--json", "--message", queued["id"])
    assert [json.loads(line)["type"] for line in listed.stdout.splitlines()] == [
        "accepted", "deferred", "requeued", "delivered"]
    only = relayctl(relay.config, "events", "--type", "delivered")
    assert only.stdout.count("\n") == 1 and "<ann@example.test>" in only.stdout
    unknown = relayctl(relay.config, "queue", "history", "NOSUCHID")
    assert (unknown.returncode, unknown.stderr) == (
        1, "relayctl: no message NOSUCHID in the queue or its history\n")
    assert relay.stop() == 0


def two_deferred(relay_process: MakeRelay, dns_server: DnsServer,
                 make_sink: Callable[..., Sink]) -> tuple[RelayProcess, Sink, list[str]]:
    """A relay with two messages deferred by a sink that answers 451; their ids."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "451 4.3.0 busy"
    relay = relay_process().start()
    port = smtp_port(relay.config)
    ids = [send_blocking(port, "app@sender.test", [f"r{n}@example.test"], message()).split()[-1]
           for n in range(2)]
    until(lambda: all(r["state"] == "deferred" for m in queue_json(relay.config)
                      for r in m["recipients"]), "deferrals")
    return relay, sink, ids


def test_operator_commands_like_postsuper_and_postcat(relay_process: MakeRelay,
                                                     dns_server: DnsServer,
                                                     make_sink: Callable[..., Sink]) -> None:
    relay, _, ids = two_deferred(relay_process, dns_server, make_sink)
    shape = relayctl(relay.config, "queue", "summary").stdout.splitlines()
    assert shape[0].split()[:3] == ["T", "5", "10"]
    assert shape[1].split()[:3] == ["TOTAL", "2", "2"] and shape[2].split()[:2] == [
        "example.test", "2"]
    by_sender = relayctl(relay.config, "queue", "summary", "--by", "sender").stdout
    assert by_sender.splitlines()[2].split()[:2] == ["sender.test", "2"]
    summary = json.loads(relayctl(relay.config, "queue", "summary", "--state", "held",
                                  "--json").stdout)
    assert summary["domains"] == []

    held = relayctl(relay.config, "queue", "hold", ids[0])
    assert (held.returncode, held.stdout) == (0, "1 recipient held\n")
    again = relayctl(relay.config, "queue", "hold", ids[0])
    assert (again.returncode, again.stdout) == (
        0, "0 recipients held (none was waiting: held already, or being delivered)\n")
    assert f"{ids[0]}!" in relayctl(relay.config, "queue", "list").stdout
    shown = relayctl(relay.config, "queue", "show", ids[0]).stdout
    assert f"Queue ID: {ids[0]}" in shown and "Sender:   app@sender.test" in shown
    assert re.search(r"r0@example\.test +held +1 +- +451 4\.3\.0 busy", shown), shown
    as_json = json.loads(relayctl(relay.config, "queue", "show", "--json", ids[0]).stdout)
    assert as_json["recipients"][0]["state"] == "held"
    # -c also after the command, as in `relayctl serve -c relay.toml`
    after = subprocess.run([relayctl_path(), "queue", "show", ids[0], "--json",
                            "-c", str(relay.config)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(after.stdout) == as_json

    catted = subprocess.run([relayctl_path(), "-c", str(relay.config), "queue", "cat", ids[1]],
                            capture_output=True, timeout=60, check=False)
    assert catted.returncode == 0
    assert catted.stdout.startswith(f"*** ENVELOPE RECORDS {ids[1]} ***\n".encode())
    assert b"sender: app@sender.test\nrecipient: r1@example.test (deferred" in catted.stdout
    assert b"\r\nSubject: test\r\n" in catted.stdout and b"Received: " in catted.stdout
    assert catted.stdout.endswith(f"*** END OF MESSAGE {ids[1]} ***\n".encode())
    header = relayctl(relay.config, "queue", "cat", "-h", ids[1]).stdout
    assert "Subject: test" in header and "ENVELOPE" not in header and "hello" not in header

    # Several ids and ids on standard input (mailq's marks ignored), like postsuper -H -.
    released = relayctl(relay.config, "queue", "release", "-", stdin=f"{ids[0]}!\n{ids[1]}\n")
    assert (released.returncode, released.stdout) == (0, "1 recipient released\n")
    unknown = relayctl(relay.config, "queue", "delete", ids[1], "NOSUCHID")
    assert unknown.returncode == 1 and unknown.stdout == "1 message deleted\n"
    assert unknown.stderr == "relayctl: no message NOSUCHID in the queue\n"
    # An unknown id: one message and exit status 1, whatever the command.
    for command in ("flush", "hold", "release", "requeue", "delete", "show", "cat"):
        gone = relayctl(relay.config, "queue", command, ids[1])
        assert gone.returncode == 1, command
        assert gone.stderr == f"relayctl: no message {ids[1]} in the queue\n", command
    assert [m["id"] for m in queue_json(relay.config)] == [ids[0]]
    finished = relayctl(relay.config, "queue", "list", "--state", "delivered")
    assert finished.returncode == 2 and finished.stderr.count("\n") == 1
    assert "delivered recipients have left the queue" in finished.stderr
    assert relayctl(relay.config, "queue", "delete", "--all").stdout == "1 message deleted\n"
    assert relay.stop() == 0


def test_requeue_puts_held_and_deferred_mail_back(relay_process: MakeRelay,
                                                  dns_server: DnsServer,
                                                  make_sink: Callable[..., Sink]) -> None:
    relay, sink, ids = two_deferred(relay_process, dns_server, make_sink)
    assert relayctl(relay.config, "queue", "hold", ids[0]).returncode == 0
    sink.default_rcpt_reply = "250 2.1.5 Ok"
    nothing = relayctl(relay.config, "queue", "requeue")
    assert nothing.returncode == 2 and "give message ids" in nothing.stderr
    requeued = relayctl(relay.config, "queue", "requeue", "--all")
    assert requeued.returncode == 0 and requeued.stdout == "2 recipients requeued\n"
    sink.wait_for(2)
    until(lambda: queue_json(relay.config) == [], "the queue to empty")
    assert relay.stop() == 0


def test_restart_delivers_what_was_queued(relay_process: MakeRelay, dns_server: DnsServer,
                                          make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    relay = relay_process(retry={"min_backoff": "1s", "max_backoff": "1s"}).start()
    port = smtp_port(relay.config)
    for n in range(4):
        send_blocking(port, "app@sender.test", [f"r{n}@example.test"],
                      message(extra=f"X-Test-Id: {n}\r\n"))
    swaks = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--from", "app@sender.test",
         "--to", "swaks@example.test", "--header", "X-Test-Id: swaks", "--helo", "swaks.test"],
        capture_output=True, text=True, timeout=30, check=False)
    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
    assert "250 2.0.0 Ok: queued as" in swaks.stdout
    until(lambda: len(queue_json(relay.config, "--state", "deferred")) == 5, "deferrals")
    assert relay.stop() == 0  # nothing listens on the MX yet: all five stay queued

    sink = make_sink("127.0.0.2")
    relay.start()
    received = sink.wait_for(5)
    ids = sorted(m.content.split(b"X-Test-Id: ")[1].split(b"\r\n")[0] for m in received)
    assert ids == [b"0", b"1", b"2", b"3", b"swaks"]
    until(lambda: queue_json(relay.config) == [], "an empty queue")
    assert relay.stop() == 0


def test_config_show_is_the_effective_configuration_with_secrets_masked(
        tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[smtp]\nmax_recipients = 50\n[queue]\nbackend = "postgres"\n'
                      'dsn = "postgresql://relay:s3cret@db.internal:5433/relay"\n')
    env = {"RELAY_DELIVERY__CONNECT_TIMEOUT": "90s", "RELAY_SMTP__TIMEOUT": "300"}
    shown = relayctl(config, "config", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "s3cret" not in shown.stdout
    for line in ("max_recipients = 50", 'dsn = "postgresql://relay:********@db.internal:5433/relay"',
                 'connect_timeout = "90s"', 'timeout = "5m"', 'auth_failure_limit = "10/10m"',
                 f'path = "{tmp_path / "spool"}"', "[delivery]", 'tls = "opportunistic"'):
        assert f"\n{line}\n" in shown.stdout, line
    changed = relayctl(config, "config", "show", "-n", env=env).stdout
    assert [line for line in changed.splitlines()[1:] if line] == [
        "[smtp]", "max_recipients = 50", "[queue]", 'backend = "postgres"',
        'dsn = "postgresql://relay:********@db.internal:5433/relay"', "[delivery]",
        'connect_timeout = "90s"']


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, relay_process: MakeRelay) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[delivery]\nport = "twenty-five"\n')
    result = relayctl(bad, "config", "check")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "delivery.port" in result.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('[smtp]\nlisten = ["127.0.0.1:2525"]\nmax_mesage_size = "1MB"\n')
    result = relayctl(typo, "serve")
    assert result.returncode == 2 and "smtp.max_mesage_size: unknown key" in result.stderr
    relay = relay_process()  # configured, never started: no token yet
    result = relayctl(relay.config, "queue", "list")
    assert result.returncode == 2 and "makes it at its first start" in result.stderr
    relay.config.parent.joinpath("spool").mkdir(exist_ok=True)
    relay.config.parent.joinpath("spool", "admin.token").write_text("t" * 32)
    result = relayctl(relay.config, "queue", "list")
    assert result.returncode == 2 and "cannot reach the relay" in result.stderr
    assert result.stderr.count("\n") == 1
    hashed = relayctl(relay.config, "hash-password", stdin="pw\n")
    assert hashed.returncode == 0 and hashed.stdout.startswith("$scrypt$")


def test_a_second_relay_on_the_same_spool_refuses_to_start(relay_process: MakeRelay) -> None:
    relay = relay_process().start()
    second = relayctl(relay.config, "serve")
    assert second.returncode == 2
    assert "is in use by another relay (pid" in second.stderr
    assert "recovery" not in relay.log() and "recovery" not in second.stderr
    assert relay.stop() == 0


def test_db_status_says_the_local_index_schema_version(relay_process: MakeRelay) -> None:
    relay = relay_process()
    before = relayctl(relay.config, "db", "status")
    assert before.returncode == 0, before.stderr
    assert "no index yet" in before.stdout
    relay.start()
    status = relayctl(relay.config, "db", "status")  # while the relay runs on it
    assert status.returncode == 0, status.stderr
    assert re.search(r"index\.sqlite3 \(local\): schema version (\d+) of \1, up to date",
                     status.stdout), status.stdout
    assert relay.stop() == 0


def test_missing_tls_files_are_a_clear_error(tmp_path: Path, relay_process: MakeRelay) -> None:
    relay = relay_process(smtp={"tls_cert": str(tmp_path / "nope.pem"),
                                "tls_key": str(tmp_path / "nope.key")})
    for command in (["config", "check"], ["serve"]):
        result = relayctl(relay.config, *command)
        assert result.returncode == 2, command
        last_line = result.stderr.splitlines()[-1]
        assert last_line.startswith("relayctl: smtp.tls_cert/tls_key: cannot load")
        assert "Traceback" not in result.stderr


def test_an_unreadable_trust_store_is_a_clear_error(tmp_path: Path,
                                                    relay_process: MakeRelay) -> None:
    relay = relay_process(delivery={"ca_file": str(tmp_path / "nope.pem")})
    for command in (["config", "check"], ["serve"]):
        result = relayctl(relay.config, *command)
        assert result.returncode == 2, command
        assert result.stderr.splitlines()[-1].startswith(
            f"relayctl: delivery.ca_file: {tmp_path / 'nope.pem'}: "), result.stderr
        assert "Traceback" not in result.stderr


def test_a_port_taken_by_another_program_is_a_clear_error(relay_process: MakeRelay) -> None:
    relay = relay_process()
    port = smtp_port(relay.config)
    with socket.create_server(("127.0.0.1", port)):
        result = relayctl(relay.config, "serve")
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"relayctl: cannot start: smtp cannot listen on 127.0.0.1:{port}: "
                           f"Address already in use; pid {os.getpid()} ("), last
    assert last.endswith(") listens there"), last
    assert "relay stopping" not in result.stderr and "relay stopped" not in result.stderr
    assert "Traceback" not in result.stderr


def test_relayctl_send(relay_process: MakeRelay, dns_server: DnsServer,
                       make_sink: Callable[..., Sink], tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = relay_process().start()
    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n")
    sent = relayctl(relay.config, "send", "--from", "App <app@sender.test>", "--to",
                    "ann@example.test", "--subject", "Report", "--text", "-", "--attach",
                    str(attachment), "--header", "X-Job: 7", stdin="see attached\n")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("queued as ") and sent.stdout.endswith(" (1 recipient)\n")
    arrived = sink.wait_for(1)[0]
    assert b"X-Job: 7" in arrived.content and b'filename="report.csv"' in arrived.content

    bad = relayctl(relay.config, "send", "--from", "app@sender.test", "--to", "nobody",
                   "--text", "x")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "(to[0])" in bad.stderr
    assert relay.stop() == 0


def test_relayctl_broadcast_and_suppression(relay_process: MakeRelay, dns_server: DnsServer,
                                            make_sink: Callable[..., Sink],
                                            tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = relay_process().start()
    template = {"from": "news@sender.test", "subject": "Hi {{name}}", "text": "Hello {{name}}"}
    ndjson = tmp_path / "list.ndjson"
    ndjson.write_text("\n".join([json.dumps(template)] + [
        json.dumps({"email": f"n{n}@example.test", "fields": {"name": f"N{n}"}})
        for n in range(20)] + ['{"email": "bad"}']) + "\n")
    submitted = relayctl(relay.config, "broadcast", "submit", str(ndjson))
    assert submitted.returncode == 0, submitted.stderr
    assert "20 accepted, 0 suppressed, 1 rejected" in submitted.stdout
    assert "rejected #20 bad:" in submitted.stdout
    broadcast_id = submitted.stdout.split()[1].rstrip(":")
    followed = relayctl(relay.config, "broadcast", "status", broadcast_id, "--follow")
    lines = followed.stdout.splitlines()
    assert lines[-1].startswith(f"{broadcast_id} done: 20 total")
    assert all(a != b for a, b in itertools.pairwise(lines))  # changes only
    cancelled = relayctl(relay.config, "broadcast", "cancel", broadcast_id)
    assert cancelled.returncode == 2
    assert cancelled.stderr == (f"relayctl: broadcast {broadcast_id} is done already: "
                                "nothing left to cancel (id)\n")

    assert relayctl(relay.config, "suppression", "add", "C1@example.test").returncode == 0
    listed = relayctl(relay.config, "suppression", "list").stdout
    assert listed.startswith("c1@example.test\t*\t")
    # A suppression in another stream only: the broadcast below still sends to c0.
    added = relayctl(relay.config, "suppression", "add", "c0@example.test", "--stream",
                     "newsletter", "--reason", "unsubscribed")
    assert added.stdout == "c0@example.test: suppressed in newsletter\n", added.stderr
    in_stream = relayctl(relay.config, "suppression", "list", "--stream", "newsletter")
    assert in_stream.stdout.startswith("c0@example.test\tnewsletter\t")
    assert in_stream.stdout.endswith("\tunsubscribed\n")
    bad = relayctl(relay.config, "suppression", "list", "--stream", "Has Space")
    assert bad.returncode == 2 and "stream" in bad.stderr and "Traceback" not in bad.stderr
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("email,name\nc0@example.test,Zo\u00eb\nc1@example.test,Al\n")
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps(template))
    no_email = tmp_path / "no-email.csv"
    no_email.write_text("address,name\nc9@example.test,X\n")
    refused = relayctl(relay.config, "broadcast", "submit", str(no_email), "--template",
                       str(template_file))
    assert refused.returncode == 2 and refused.stderr == (
        f"relayctl: broadcast submit: {no_email} has no 'email' column (it has: address, "
        "name)\n")
    submitted = relayctl(relay.config, "broadcast", "submit", str(csv_file), "--template",
                         str(template_file))
    assert "1 accepted, 1 suppressed, 0 rejected" in submitted.stdout, submitted.stderr
    sink.wait_for(21)
    [zoe] = [email.message_from_bytes(m.content, policy=email.policy.default)
             for m in sink.messages if m.rcpt_tos == ["c0@example.test"]]
    assert zoe.get_content().strip() == "Hello Zo\u00eb"  # type: ignore[attr-defined]
    status = relayctl(relay.config, "broadcast", "status", submitted.stdout.split()[1][:-1])
    assert "1 suppressed" in status.stdout
    assert relayctl(relay.config, "suppression", "remove", "c1@example.test").returncode == 0
    removed = relayctl(relay.config, "suppression", "remove", "c0@example.test", "--stream",
                       "newsletter")
    assert removed.stdout == "c0@example.test: no longer suppressed in newsletter\n"
    assert relayctl(relay.config, "suppression", "list").stdout == ""
    for command in ("status", "cancel"):
        missing = relayctl(relay.config, "broadcast", command, "NOSUCH")
        assert (missing.returncode, missing.stderr) == (1, "relayctl: no broadcast NOSUCH\n")
    assert relay.stop() == 0
    assert "Traceback" not in relay.log_path.read_text()


def test_relayctl_dkim_keygen_and_check(dns_server: DnsServer, mx_port: int,
                                        tmp_path: Path) -> None:
    config = write_relay_config(tmp_path, dns_server.address, mx_port)
    made = relayctl(config, "dkim", "keygen", "sender.test", "k1", "--algorithm",
                    "ed25519-sha256")
    assert made.returncode == 0, made.stderr
    key = tmp_path / "policies" / "dkim" / "sender.test.k1.key"
    assert key.stat().st_mode & 0o777 == 0o600
    record = next(line for line in made.stdout.splitlines() if "IN TXT" in line)
    (tmp_path / "policies" / "dkim.toml").write_text(
        f'[[keys]]\ndomain = "sender.test"\nselector = "k1"\nprivate_key = "{key}"\n'
        'algorithm = "ed25519-sha256"\n')

    missing = relayctl(config, "dkim", "check", "sender.test", "k1")
    assert missing.returncode == 2 and "has no DKIM record" in missing.stderr
    dns_server.add("k1._domainkey.sender.test", "TXT", record.split("( ", 1)[1].rstrip(" )"))
    checked = relayctl(config, "dkim", "check", "sender.test", "k1")
    assert checked.returncode == 0 and "matches" in checked.stdout, checked.stderr

    again = relayctl(config, "dkim", "keygen", "sender.test", "k1", "--algorithm",
                     "ed25519-sha256")
    assert again.returncode == 2 and "exists" in again.stderr
    other = relayctl(config, "dkim", "keygen", "sender.test", "k2").stdout
    dns_server.records["k1._domainkey.sender.test"]["TXT"] = [
        next(line for line in other.splitlines() if "IN TXT" in line).split("( ", 1)[1]
        .rstrip(" )")]
    wrong = relayctl(config, "dkim", "check", "sender.test", "k1")
    assert wrong.returncode == 2 and "another key" in wrong.stderr

    for domain, selector, complaint in (
            ("not a domain", "k3", "domain 'not a domain': domain has characters"),
            ("sender.test", "bad selector!", "selector 'bad selector!': letters, digits"),
            ("[127.0.0.1]", "k3", "domain '[127.0.0.1]': an address literal")):
        refused = relayctl(config, "dkim", "keygen", domain, selector)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.startswith(f"relayctl: dkim keygen: {complaint}")
    assert sorted(p.name for p in (tmp_path / "policies" / "dkim").iterdir()) == [
        "sender.test.k1.key", "sender.test.k2.pem"]


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_relayctl_pgp_import_and_list(dns_server: DnsServer, mx_port: int,
                                      tmp_path: Path) -> None:
    config = write_relay_config(tmp_path, dns_server.address, mx_port)
    (tmp_path / "policies" / "pgp.toml").write_text(
        'keyring = "gnupg"\n[[rules]]\nrecipients = ["@partner.test"]\n')
    assert "no keyring" not in relayctl(config, "pgp", "list").stderr
    home = tmp_path / "recipient"
    home.mkdir(mode=0o700)
    base = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
            "--passphrase", ""]
    subprocess.run([*base, "--quick-gen-key", "Ann <ann@partner.test>", "future-default",
                    "default", "never"], check=True, capture_output=True, timeout=120)
    exported = subprocess.run([*base, "--armor", "--export", "ann@partner.test"],
                              check=True, capture_output=True, timeout=60).stdout
    (tmp_path / "ann.asc").write_bytes(exported)
    imported = relayctl(config, "pgp", "import", str(tmp_path / "ann.asc"))
    assert imported.returncode == 0 and imported.stdout.startswith("imported "), \
        imported.stderr
    listed = relayctl(config, "pgp", "list")
    assert "Ann <ann@partner.test>" in listed.stdout and "encrypts" in listed.stdout
    (tmp_path / "junk.asc").write_text("not a key")
    junk = relayctl(config, "pgp", "import", str(tmp_path / "junk.asc"))
    assert junk.returncode == 2 and junk.stderr.count("\n") == 1


def test_relayctl_mta_sts(dns_server: DnsServer, mx_port: int, tmp_path: Path,
                          ca: trustme.CA) -> None:
    server = PolicyServer(server_context(ca, "mta-sts.example.test")).start()
    try:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        config = write_relay_config(tmp_path, dns_server.address, mx_port, {
            "delivery": {"mta_sts_port": server.port, "ca_file": "ca.pem"}})
        none = relayctl(config, "mta-sts", "example.test")
        assert none.returncode == 2 and "publishes no policy" in none.stderr
        dns_server.add("_mta-sts.example.test", "TXT", '"v=STSv1; id=7"')
        dns_server.add("mta-sts.example.test", "A", server.host)
        broken = relayctl(config, "mta-sts", "example.test")
        assert broken.returncode == 2 and "HTTP 404" in broken.stderr
        assert broken.stderr.count("\n") == 1
        server.serve("mta-sts.example.test",
                     "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 600\n")
        dns_server.add("example.test", "MX", "10 mx.example.test.", "20 mx.elsewhere.test.")
        dns_server.add("mx.example.test", "A", "127.0.0.2")
        dns_server.add("mx.elsewhere.test", "A", "127.0.0.3")
        shown = relayctl(config, "mta-sts", "example.test")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == [
            "example.test: policy id 7, mode enforce, max_age 600s, mx *.example.test",
            "  MX mx.example.test: matches",
            "  MX mx.elsewhere.test: does not match: not used"]
    finally:
        server.stop()


def test_webhook_events_survive_a_kill_9(relay_process: MakeRelay, dns_server: DnsServer,
                                         make_sink: Callable[..., Sink],
                                         tmp_path: Path) -> None:
    """The receiver answers 500 while the relay takes and delivers mail, the relay is
    killed, restarted, and the receiver comes back: every event of every message arrives
    (some twice, never one id with two bodies), signed."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    secret = new_secret()
    (tmp_path / "webhook.secret").write_text(secret)
    receiver = WebhookReceiver(secret)
    receiver.failing = True
    try:
        relay = relay_process(webhooks=[{
            "url": receiver.url, "secret_file": "webhook.secret", "min_backoff": "0.1s",
            "max_backoff": "0.5s", "events": ["accepted", "delivered"]}]).start()
        count = 8
        for n in range(count):
            send_blocking(smtp_port(relay.config), "app@sender.test", [f"u{n}@example.test"],
                          message(subject=f"n{n}"))
        sink.wait_for(count)
        receiver.wait_for(lambda r: r.refused >= 2)
        relay.kill()
        receiver.failing = False
        relay.start()

        def everything(r: WebhookReceiver) -> bool:
            seen = {(e["type"], e["data"]["recipient"]) for e in r.events()}
            return all((kind, f"u{n}@example.test") in seen
                       for kind in ("accepted", "delivered") for n in range(count))

        receiver.wait_for(everything)
        assert receiver.bad_signatures == 0
        assert all(len(bodies) == 1 for bodies in receiver.bodies.values())
        assert relay.stop() == 0
    finally:
        receiver.stop()


def test_relayctl_apikey_and_webhooks(relay_process: MakeRelay) -> None:
    relay = relay_process().start()
    made = relayctl(relay.config, "apikey", "create", "billing app", "--scope", "send",
                    "--scope", "read", "--rate", "100/m")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("rk_") and "not shown again" in made.stderr
    [line] = relayctl(relay.config, "apikey", "list").stdout.splitlines()
    key_id = line.split()[0]
    assert "active" in line and "send,read" in line and key not in line
    sent = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
         f"Authorization: Bearer {key}", "-H", "Content-Type: application/json", "-d",
         '{"from": "app@sender.test", "to": ["a@example.test"], "text": "x"}',
         f"{admin_url(relay.config)}/v1/messages"], capture_output=True, text=True,
        check=False)
    assert sent.stdout == "202"
    assert relayctl(relay.config, "apikey", "revoke", key_id).returncode == 0
    assert "revoked" in relayctl(relay.config, "apikey", "list").stdout
    again = relayctl(relay.config, "apikey", "revoke", key_id)
    assert again.returncode == 1 and again.stderr.count("\n") == 1  # no such id

    added = relayctl(relay.config, "webhooks", "add", "http://127.0.0.1:9/hooks",
                     "--event", "bounced")
    assert added.returncode == 0 and added.stdout.startswith("whsec_")
    [hook] = relayctl(relay.config, "webhooks", "list").stdout.splitlines()
    assert "bounced" in hook and "http://127.0.0.1:9/hooks" in hook
    hook_id = hook.split()[0]
    assert relayctl(relay.config, "webhooks", "remove", hook_id).returncode == 0
    assert relayctl(relay.config, "webhooks", "list").stdout == ""
    assert relay.stop() == 0


def admin_url(config: Path) -> str:
    host, port = split_hostport(config_module.load(config).admin.listen)
    return f"http://{host}:{port}"
