"""Relay nodes (`relayctl serve` processes) sharing one queue in a real PostgreSQL: mail
sent to either node is delivered once; a node killed with its deliveries in flight loses
nothing: its leases expire and another node sends the mail again (duplicates no more than
it had leased); PostgreSQL stopped under load: new mail gets 4xx and /healthz says not
ready meanwhile, nothing acknowledged is lost, and the node recovers without a restart; a
paused node changes nothing once its leases were taken over; connection and rate limits
hold for the cluster."""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trustme

from relay import config as config_module
from relay.passwords import hash_password
from relay.queue.postgres.schema import MIGRATIONS
from tests.acceptance.test_relayctl import queue_json, smtp_port, until
from tests.support.client import send_blocking
from tests.support.dns_server import DnsServer
from tests.support.postgres import PostgresServer
from tests.support.process import RelayProcess, relayctl
from tests.support.relayconf import write_access_policy, write_relay_config
from tests.support.sink import Received, Sink

_TEST_ID = re.compile(rb"X-Test-Id: (\d+)")
MakeNode = Callable[..., RelayProcess]
PASSWORD = "s3cret-db-password"


@pytest.fixture
def make_node(tmp_path: Path, dns_server: DnsServer, mx_port: int,
              postgres_dsn: str) -> Iterator[MakeNode]:
    nodes: list[RelayProcess] = []

    def make(name: str, **overrides: dict[str, Any]) -> RelayProcess:
        directory = tmp_path / name
        directory.mkdir()
        overrides.setdefault("queue", {}).update({"backend": "postgres", "dsn_file": "dsn",
                                                  "node": name})
        # A password in the DSN (the test server trusts loopback and ignores it): it must
        # never reach a log line or an answer.
        with_password = postgres_dsn.replace("://relay@", f"://relay:{PASSWORD}@")
        (directory / "dsn").write_text(with_password + "\n")
        config = write_relay_config(directory, dns_server.address, mx_port, overrides)
        node = RelayProcess(config, directory / "relay.log")
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.kill()


def numbered(number: int) -> bytes:
    return f"Subject: {number}\r\nX-Test-Id: {number}\r\n\r\nbody\r\n".encode()


def send_numbered(node: RelayProcess, number: int) -> None:
    """Message `number` to r<number>@example.test through `node`'s SMTP."""
    send_blocking(smtp_port(node.config), "app@sender.test", [f"r{number}@example.test"],
                  numbered(number))


def test_two_nodes_share_one_queue(make_node: MakeNode, dns_server: DnsServer,
                                   make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    first = make_node("a")
    status = relayctl(first.config, "db", "status")
    newest = len(MIGRATIONS)
    assert status.returncode == 0 and f"schema version 0 of {newest}" in status.stdout, (
        status.stderr)
    first.start()
    second = make_node("b").start()
    assert "queue=postgres 127.0.0.1:" in first.log()
    assert PASSWORD not in first.log() + second.log() + status.stdout + status.stderr
    for number in range(40):
        node = (first, second)[number % 2]
        send_numbered(node, number)
    sink.wait_for(40)
    until(lambda: queue_json(first.config) == [], "the queue to empty")
    numbers = sorted(_test_id(m) for m in sink.messages)
    assert numbers == list(range(40))  # each once
    status = relayctl(second.config, "db", "status")
    assert f"schema version {newest} of {newest}, up to date" in status.stdout
    # Each node's /metrics gives the cluster's queue depth: mail deferred by the first node
    # shows on the second.
    sink.default_rcpt_reply = "451 4.3.0 busy"
    send_blocking(smtp_port(first.config), "app@sender.test", ["late@example.test"],
                  numbered(99))
    until(lambda: 'relay_queue_recipients{state="deferred"} 1.0' in metrics(second),
          "the second node to see the deferral")
    assert "relay_node_leased_recipients 0.0" in metrics(second)
    assert first.stop() == 0 and second.stop() == 0


def metrics(node: RelayProcess) -> str:
    loaded = config_module.load(node.config)
    token = loaded.admin_token_path.read_text().strip()
    return httpx.get(f"http://{loaded.admin.listen}/metrics", timeout=30,
                     headers={"Authorization": f"Bearer {token}"}).text


def test_a_destination_connection_limit_holds_for_the_cluster(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_delay = 0.2  # sessions stay open long enough to overlap
    limit = {"delivery": {"max_connections_per_domain": 2}}
    nodes = [make_node(name, **limit).start() for name in ("a", "b")]
    senders = [threading.Thread(target=lambda node=node, first=first: [
        send_blocking(smtp_port(node.config), "app@sender.test", [f"r{n}@example.test"],
                      numbered(n)) for n in range(first, first + 12)])
        for node, first in zip(nodes, (0, 12), strict=True)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    sink.wait_for(24, timeout=60)
    assert 1 <= sink.max_concurrent <= 2  # two nodes, yet two connections at most
    for node in nodes:
        assert node.stop() == 0


def test_a_killed_node_leaves_its_work_to_the_others(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_gate = threading.Event()
    doomed = make_node("doomed", queue={"lease": "2s"}).start()
    for number in range(10):
        send_numbered(doomed, number)
    sink.wait_at_gate(10)  # every message leased by the doomed node and in flight
    doomed.kill()
    survivor = make_node("survivor", queue={"lease": "2s"}).start()
    sink.data_gate.set()
    until(lambda: queue_json(survivor.config) == [], "the survivor to deliver", timeout=60)
    numbers = [_test_id(m) for m in sink.messages]
    assert sorted(set(numbers)) == list(range(10))  # nothing lost
    assert len(numbers) <= 10 + 10  # duplicates only of what the dead node had leased
    assert survivor.stop() == 0


def test_a_database_outage_is_4xx_then_recovery_without_restart(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink],
        postgres_server: PostgresServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    # A claim the database committed as it shut down, whose answer the node never got, is
    # the node's by its lease alone: it comes back when the lease expires (at-least-once).
    # A short lease makes that come within the wait for the queue to empty below.
    node = make_node("node", queue={"lease": "15s"}).start()
    port = smtp_port(node.config)
    health = f"http://{config_module.load(node.config).admin.listen}/healthz"
    acked: list[int] = []
    refused: list[int] = []
    sending = threading.Event()
    sending.set()

    def load() -> None:
        number = 0
        while sending.is_set():
            try:
                send_blocking(port, "app@sender.test", [f"r{number}@example.test"],
                              numbered(number))
                acked.append(number)
            except smtplib.SMTPResponseException as exc:
                assert 400 <= exc.smtp_code < 500, exc  # never a 5xx for our own trouble
                refused.append(number)
            number += 1

    sender = threading.Thread(target=load)
    sender.start()
    try:
        until(lambda: len(acked) >= 20, "mail before the outage")
        postgres_server.pause()
        try:
            down = httpx.get(health, timeout=30)
            assert down.status_code == 503 and down.json()["error"]["code"] == "not_ready"
            _the_api_and_relayctl_say_the_queue_is_unavailable(node)
            until(lambda: len(refused) >= 5, "mail refused during the outage")
            threading.Event().wait(10)  # the outage lasts ten seconds, under load
        finally:
            postgres_server.resume()
        until(lambda: httpx.get(health, timeout=30).status_code == 200, "ready again",
              timeout=60)
        accepted_before = len(acked)
        until(lambda: len(acked) >= accepted_before + 20, "mail taken again", timeout=60)
    finally:
        sending.clear()
        sender.join(60)
    until(lambda: queue_json(node.config) == [], "the queue to empty", timeout=60)
    arrived = {_test_id(m) for m in sink.messages}
    assert set(acked) <= arrived  # every acknowledged message arrived
    log = node.log()
    assert "Traceback" not in log
    # The API's failures by state change: the first one, the recovery (one line each).
    assert log.count("answering admin API requests from the queue failed: ") == 1, log
    assert log.count("answering admin API requests from the queue works again") == 1, log
    assert node.stop() == 0


def _the_api_and_relayctl_say_the_queue_is_unavailable(node: RelayProcess) -> None:
    config = config_module.load(node.config)
    token = config.admin_token_path.read_text().strip()
    for _ in range(3):
        answer = httpx.get(f"http://{config.admin.listen}/v1/queue", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "queue_unavailable"
        assert error["message"].startswith("the queue cannot be used now: queue database")
        assert PASSWORD not in answer.text
    listed = relayctl(node.config, "queue", "list")
    assert listed.returncode == 2
    assert listed.stderr.startswith("relayctl: the queue cannot be used now: queue database")
    assert listed.stderr.count("\n") == 1, listed.stderr


def test_a_users_rate_limit_holds_for_the_cluster(
        make_node: MakeNode, server_cert: tuple[str, str], ca: trustme.CA) -> None:
    cert, key = server_cert
    nodes = []
    for name in ("a", "b"):
        node = make_node(name, smtp={"tls_cert": cert, "tls_key": key})
        write_access_policy(node.config.parent, f"""
trusted_networks = []
[[users]]
name = "app1"
password_hash = "{hash_password('pw-for-app1')}"
allowed_senders = ["@sender.test"]
rate_limit = "3/h"
""")
        nodes.append(node.start())
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    codes = []
    for attempt in range(5):
        node = nodes[attempt % 2]
        with smtplib.SMTP("127.0.0.1", smtp_port(node.config), timeout=30) as client:
            client.starttls(context=context)
            client.login("app1", "pw-for-app1")
            codes.append(client.mail("app@sender.test")[0])
    assert codes == [250, 250, 250, 451, 451]  # three for the cluster, not per node
    for node in nodes:
        assert node.stop() == 0


def test_a_paused_node_changes_nothing_after_its_lease_was_taken_over(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_gate = threading.Event()
    short_lease = {"queue": {"lease": "2s"}}
    paused = make_node("paused", **short_lease).start()
    for number in range(5):
        send_numbered(paused, number)
    sink.wait_at_gate(5)  # the paused node holds every lease, its transactions in flight
    assert paused.process is not None
    paused.process.send_signal(signal.SIGSTOP)
    try:
        other = make_node("other", **short_lease).start()
        sink.wait_at_gate(10)  # the leases expired: the other node sends them too
        sink.data_gate.set()
        until(lambda: queue_json(other.config) == [], "the other node to finish", timeout=60)
    finally:
        paused.process.send_signal(signal.SIGCONT)
    # Awake again, the paused node hears its 250s and changes nothing: its lease is gone.
    paused.wait_for_lines("came after their lease was lost", timeout=60)
    assert queue_json(other.config) == []
    numbers = [_test_id(m) for m in sink.messages]
    assert sorted(set(numbers)) == list(range(5)) and len(numbers) == 10
    assert paused.stop() == 0 and other.stop() == 0


class ClusterLoad:
    """CLIENTS connections spread over the nodes, each sending its share; a session
    broken by a killed node leaves its message unacknowledged (it got no 250), and the
    client goes on with the next node. A message whose session broke may still have been
    committed (the node died between its COMMIT and its 250): sending it again can queue
    it twice, which at-least-once allows; `unanswered` counts those."""

    def __init__(self, nodes: list[RelayProcess], messages: int, clients: int = 6) -> None:
        self.ports = [smtp_port(node.config) for node in nodes]
        self.messages, self.clients = messages, clients
        self.acked: set[int] = set()
        self.unanswered = 0  # messages whose session broke before their reply
        self.lock = threading.Lock()
        self.halfway = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        self.halfway.set()

    def _client(self, index: int) -> None:
        todo = list(range(index, self.messages, self.clients))
        port = index
        while todo:
            port += 1
            connected = False
            try:
                with smtplib.SMTP("127.0.0.1", self.ports[port % len(self.ports)],
                                  timeout=30) as client:
                    connected = True
                    while todo:
                        client.sendmail("load@sender.test", ["sink@example.test"],
                                        numbered(todo[0]))
                        with self.lock:
                            self.acked.add(todo.pop(0))
                            if len(self.acked) >= self.messages // 3:
                                self.halfway.set()
            except (smtplib.SMTPException, OSError):
                # That node died: this message got no 250 (it may be stored all the same);
                # try the next node.
                with self.lock:
                    self.unanswered += connected


def test_kill_9_of_one_node_of_three_under_load(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink],
        postgres_dsn: str) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    nodes = [make_node(name, queue={"lease": "3s"}).start() for name in ("a", "b", "c")]
    load = ClusterLoad(nodes, messages=2000)
    sender = threading.Thread(target=load.run)
    sender.start()
    assert load.halfway.wait(180)
    victim = nodes[2]
    victim.kill()
    leased = asyncio.run(_leased_by(postgres_dsn, "c"))
    # Within its lease time (3 s, and the survivors' next look) the work is taken over.
    until(lambda: asyncio.run(_leased_by(postgres_dsn, "c")) == 0,
          "the dead node's leases to be taken over", timeout=3 * 3)
    sender.join(300)
    acked = set(load.acked)
    survivors = nodes[:2]

    def all_acked_arrived(messages: list[Received]) -> bool:
        return acked <= {_test_id(m) for m in messages}

    received = [_test_id(m) for m in sink.wait_until(all_acked_arrived, timeout=180)]
    until(lambda: queue_json(survivors[0].config) == [], "the survivors to finish",
          timeout=60)  # the dead node's leases came back and were delivered
    # Sent twice: what the dead node had delivered but not recorded (its leases), and what
    # it had committed but not answered.
    duplicates = len(received) - len(set(received))
    assert duplicates <= leased + load.unanswered, (duplicates, leased, load.unanswered)
    for node in survivors:
        assert node.stop() == 0


async def _leased_by(dsn: str, node: str) -> int:
    """How many recipients the node of this name holds leases on (its leases' owner is
    "name/incarnation", queue.postgres.nodes)."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(
            "SELECT COUNT(*) FROM recipients WHERE state = 'active' "
            "AND split_part(lease_owner, '/', 1) = $1", node))
    finally:
        await connection.close()


def _test_id(message: Received) -> int:
    return int(_TEST_ID.search(message.content).group(1))  # type: ignore[union-attr]


def test_a_restarted_node_takes_back_its_own_leases_at_once(
        make_node: MakeNode, dns_server: DnsServer, make_sink: Callable[..., Sink],
        mx_port: int) -> None:
    """kill -9 of a node whose deliveries hang (an MX that accepts and never greets): the
    same node started again (its [queue] node name) takes its leases back at start, so
    acknowledged mail does not wait out the lease (five minutes here); a second process
    with that name, while it runs, refuses to start; `relayctl db status` lists the node
    by name with its heartbeat."""
    silent = socket.create_server(("127.0.0.3", mx_port))  # accepts, never says a word
    dns_server.add("example.test", "A", "127.0.0.3")
    sink = make_sink("127.0.0.2")
    try:
        node = make_node("a", queue={"lease": "5m"}).start()
        for number in range(3):
            send_numbered(node, number)
        until(lambda: [r["state"] for m in queue_json(node.config) for r in m["recipients"]]
              == ["active"] * 3, "the node to hold its three leases")
        node.kill()
        dns_server.records["example.test"]["A"] = ["127.0.0.2"]  # the MX works again

        node.start()
        sink.wait_for(3, timeout=60)  # well within the lease it would otherwise wait out
        assert sorted(_test_id(m) for m in sink.messages) == [0, 1, 2]
        node.wait_for_lines("took back 3 recipients")

        twin = relayctl(node.config, "serve")  # the same name, while it runs
        assert twin.returncode == 2
        assert twin.stderr.splitlines()[-1] == (
            "relayctl: cannot start: another node named a is running on this queue "
            "database: give each node its own [queue] node")
        status = relayctl(node.config, "db", "status")
        assert status.returncode == 0, status.stderr
        assert re.search(r"^node a: running, last heartbeat 20\d\d-", status.stdout, re.M), \
            status.stdout
        assert "Traceback" not in node.log()
        assert node.stop() == 0
    finally:
        silent.close()


def test_a_console_session_holds_on_every_node_and_across_a_restart(
        make_node: MakeNode, tmp_path: Path) -> None:
    """Behind a load balancer a request may reach any node: a session opened on one is
    known to the others, survives a restart, and signing out on one ends it on all."""
    token = tmp_path / "admin.token"  # one token for the cluster, as a Secret gives it
    token.write_text("a-shared-admin-token-of-the-cluster\n")
    nodes = [make_node(name, admin={"token_file": str(token)}).start() for name in "ab"]
    a, b = (f"http://{config_module.load(n.config).admin.listen}" for n in nodes)
    signed_in = httpx.post(f"{a}/ui/sign-in", data={"token": token.read_text().strip()},
                           timeout=30)
    assert signed_in.status_code == 303
    cookie = {"relay_console": signed_in.cookies["relay_console"]}

    def status(url: str) -> int:
        return httpx.get(f"{url}/ui/queue", cookies=cookie, timeout=30).status_code

    assert status(a) == 200 and status(b) == 200  # the other node knows it
    assert nodes[0].stop() == 0
    nodes[0].start()
    assert status(a) == 200  # a restart keeps it
    page = httpx.get(f"{b}/ui/queue", cookies=cookie, timeout=30).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    signed_out = httpx.post(f"{b}/ui/sign-out", data={"csrf": csrf.group(1)},
                            cookies=cookie, timeout=30)
    assert signed_out.status_code == 303
    assert status(a) == 303 and status(b) == 303  # ended everywhere: to the sign-in page
    for node in nodes:
        assert node.stop() == 0
