"""MTA-STS (RFC 8461) against a real HTTPS policy server, the tests' DNS server and sinks
whose certificates (from one trustme CA, the relay's `[delivery] ca_file`) do and do not
match their MX names."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from relay.delivery.mta_sts import FETCH_RETRY, HttpsFetcher, MtaSts, PolicyStore, trust_store
from relay.delivery.mx import NextHops
from relay.queue import State
from tests.integration.conftest import RunningRelay, StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.policy_server import PolicyServer, server_context
from tests.support.sink import Sink

ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmx: *.backup.test\nmax_age: 86400\n"


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def policy_server(ca: trustme.CA, dns_server: DnsServer) -> Iterator[PolicyServer]:
    server = PolicyServer(server_context(ca, "mta-sts.example.test")).start()
    dns_server.add("mta-sts.example.test", "A", server.host)
    yield server
    server.stop()


def publish(dns_server: DnsServer, policy_id: str) -> None:
    dns_server.records["_mta-sts.example.test"] = {"TXT": [f'"v=STSv1; id={policy_id};"']}


async def start_strict(start_relay: StartRelay, policy_server: PolicyServer,
                       ca_file: str) -> RunningRelay:
    return await start_relay(delivery={"mta_sts_port": policy_server.port, "ca_file": ca_file})


async def deliver_one(relay: RunningRelay) -> str:
    answer = await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    return answer.split()[-1]


async def test_enforce_delivers_over_validated_tls(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        policy_server: PolicyServer, ca_file: str, ca: trustme.CA) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.2")
    publish(dns_server, "20261128")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    sink = make_sink("127.0.0.2", tls_context=server_context(ca, "mx.example.test"))
    relay = await start_strict(start_relay, policy_server, ca_file)
    await deliver_one(relay)
    [received] = await asyncio.to_thread(sink.wait_for, 1)
    assert received.tls
    assert policy_server.requests == [
        ("mta-sts.example.test", "/.well-known/mta-sts.txt", "mta-sts.example.test")]
    assert relay.relay.metrics.registry.get_sample_value(
        "relay_mta_sts_policy_fetches_total", {"result": "ok"}) == 1


async def test_enforce_skips_an_mx_whose_certificate_does_not_match(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        policy_server: PolicyServer, ca_file: str, ca: trustme.CA) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.", "20 mx2.backup.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.backup.test", "A", "127.0.0.3")
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    wrong = make_sink("127.0.0.2", tls_context=server_context(ca, "elsewhere.test"))
    right = make_sink("127.0.0.3", tls_context=server_context(ca, "mx2.backup.test"))
    relay = await start_strict(start_relay, policy_server, ca_file)
    await deliver_one(relay)
    [received] = await asyncio.to_thread(right.wait_for, 1)
    assert received.tls
    assert wrong.messages == []


@pytest.mark.parametrize(("case", "expected"), [
    ("certificate for another name", "451 4.7.5 certificate of mx.example.test"),
    ("certificate from another CA", "451 4.7.5 certificate of mx.example.test"),
    ("no STARTTLS", "451 4.7.5 TLS is required"),
    ("MX not in the policy", "451 4.7.5 No MX host of the recipient domain matches"),
])
async def test_enforce_defers_without_a_valid_mx(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        policy_server: PolicyServer, ca_file: str, ca: trustme.CA, case: str,
        expected: str) -> None:
    mx_name = "mx.other.test" if case == "MX not in the policy" else "mx.example.test"
    dns_server.add("example.test", "MX", f"10 {mx_name}.")
    dns_server.add(mx_name, "A", "127.0.0.2")
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    certificates = {"certificate for another name": server_context(ca, "elsewhere.test"),
                    "certificate from another CA": server_context(trustme.CA(), "mx.example.test"),
                    "no STARTTLS": None,
                    "MX not in the policy": server_context(ca, "mx.other.test")}
    sink = make_sink("127.0.0.2", tls_context=certificates[case])
    relay = await start_strict(start_relay, policy_server, ca_file)
    info = await relay.until_state(await deliver_one(relay), State.DEFERRED)
    assert info.recipients[0].last_reply.startswith(expected)
    assert sink.messages == []


async def test_testing_mode_delivers_and_logs(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        policy_server: PolicyServer, ca_file: str, ca: trustme.CA,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    dns_server.add("example.test", "MX", "10 mx.other.test.")
    dns_server.add("mx.other.test", "A", "127.0.0.2")
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE.replace("enforce", "testing"))
    sink = make_sink("127.0.0.2", tls_context=server_context(ca, "elsewhere.test"))
    relay = await start_strict(start_relay, policy_server, ca_file)
    await deliver_one(relay)
    [received] = await asyncio.to_thread(sink.wait_for, 1)
    assert received.tls  # opportunistic, as without a policy
    logged = [r.getMessage() for r in caplog.records]
    assert any("MX mx.other.test not in policy 1 (mode testing" in m for m in logged)
    assert any("certificate of mx.other.test[127.0.0.2]" in m and "testing mode: sent anyway"
               in m for m in logged), logged


async def test_no_policy_published_means_no_fetch(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        policy_server: PolicyServer, ca_file: str) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.2")
    policy_server.serve("mta-sts.example.test", ENFORCE)  # served, but not announced in DNS
    sink = make_sink("127.0.0.2")  # no STARTTLS: fine without a policy
    relay = await start_strict(start_relay, policy_server, ca_file)
    await deliver_one(relay)
    [received] = await asyncio.to_thread(sink.wait_for, 1)
    assert not received.tls
    assert policy_server.requests == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fetches() -> list[bool]:
    return []


@pytest.fixture
def make_policies(dns_server: DnsServer, policy_server: PolicyServer, ca_file: str,
                  clock: Clock, tmp_path: Path, fetches: list[bool]) -> Callable[[], MtaSts]:
    """The relay's policy cache on the tests' DNS server and the real HTTPS server, with
    a clock the test moves (max_age is a day), kept in a file as in the spool; `fetches`
    records whether each fetch worked."""
    def make() -> MtaSts:
        hops = NextHops([dns_server.address], 25, timeout=5)
        fetcher = HttpsFetcher(hops.addresses, trust_store(ca_file), policy_server.port, 5)
        return MtaSts(hops.resolver, fetcher, clock, PolicyStore(tmp_path / "mta-sts.jsonl"),
                      fetches.append)

    return make


@pytest.fixture
def policies(make_policies: Callable[[], MtaSts]) -> MtaSts:
    return make_policies()


async def test_policy_is_cached_until_the_id_changes(
        policies: MtaSts, dns_server: DnsServer, policy_server: PolicyServer,
        clock: Clock) -> None:
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    first = await asyncio.gather(*(policies.policy_for("example.test") for _ in range(5)))
    assert {p.mode if p else None for p in first} == {"enforce"}
    assert policy_server.requests_for("mta-sts.example.test") == 1  # one fetch for all five
    clock.now += 3600
    assert await policies.policy_for("Example.Test.") == first[0]
    assert policy_server.requests_for("mta-sts.example.test") == 1
    publish(dns_server, "2")
    policy_server.serve("mta-sts.example.test", ENFORCE.replace("enforce", "testing"))
    renewed = await policies.policy_for("example.test")
    assert renewed is not None and (renewed.id, renewed.mode) == ("2", "testing")
    assert policy_server.requests_for("mta-sts.example.test") == 2


async def test_cached_policy_outlives_dns_and_https_trouble_until_max_age(
        policies: MtaSts, dns_server: DnsServer, policy_server: PolicyServer,
        clock: Clock) -> None:
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    cached = await policies.policy_for("example.test")
    assert cached is not None and cached.mode == "enforce"
    policy_server.stop()
    publish(dns_server, "2")  # a new id whose policy cannot be fetched
    assert await policies.policy_for("example.test") == cached
    del dns_server.records["_mta-sts.example.test"]  # an attacker strips the TXT record
    assert await policies.policy_for("example.test") == cached
    dns_server.servfail.add("_mta-sts.example.test")
    assert await policies.policy_for("example.test") == cached
    clock.now += 86400
    assert await policies.policy_for("example.test") is None


async def test_a_failing_txt_lookup_is_logged_when_it_starts_and_when_it_ends(
        policies: MtaSts, dns_server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.mta_sts")
    dns_server.servfail.add("_mta-sts.example.test")
    for _ in range(3):
        assert await policies.policy_for("example.test") is None
    dns_server.servfail.clear()
    assert await policies.policy_for("example.test") is None  # none published
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.mta_sts"]
    assert lines == [
        ("mta-sts: example.test: cannot look up _mta-sts.example.test TXT (NoNameservers): "
         "no policy known, delivering without one"),
        "mta-sts: example.test: the policy's TXT record can be looked up again"]


async def test_a_restart_keeps_cached_policies(
        make_policies: Callable[[], MtaSts], dns_server: DnsServer,
        policy_server: PolicyServer, clock: Clock, tmp_path: Path) -> None:
    publish(dns_server, "1")
    policy_server.serve("mta-sts.example.test", ENFORCE)
    cached = await make_policies().policy_for("example.test")
    assert cached is not None
    with (tmp_path / "mta-sts.jsonl").open("a") as file:
        file.write('{"domain": "cut.test", "fetched"')  # a line a crash cut short
    policy_server.stop()
    clock.now += 3600
    assert await make_policies().policy_for("example.test") == cached  # its host is down
    clock.now += 86400
    assert await make_policies().policy_for("example.test") is None  # expired meanwhile
    assert (tmp_path / "mta-sts.jsonl").read_text() == ""  # compacted


async def test_a_failed_fetch_is_not_retried_at_once(
        policies: MtaSts, dns_server: DnsServer, policy_server: PolicyServer,
        clock: Clock, fetches: list[bool]) -> None:
    publish(dns_server, "1")
    policy_server.answers["mta-sts.example.test"] = (500, "text/plain", b"oops\n", {})
    assert await policies.policy_for("example.test") is None  # deliver as without MTA-STS
    assert await policies.policy_for("example.test") is None
    assert policy_server.requests_for("mta-sts.example.test") == 1
    policy_server.serve("mta-sts.example.test", ENFORCE)
    clock.now += FETCH_RETRY
    fetched = await policies.policy_for("example.test")
    assert fetched is not None and fetched.mode == "enforce"
    assert fetches == [False, True]


@pytest.mark.parametrize("answer", [
    (301, "text/plain", b"", {"Location": "/.well-known/mta-sts.txt"}),  # to itself
    (200, "text/html", ENFORCE.encode(), {}),
    (200, "text/plain", ENFORCE.encode() + b"#" * 70_000, {}),
    (200, "text/plain", ENFORCE.replace("STSv1", "STSv2").encode(), {}),
], ids=["redirect", "media type", "too large", "version"])
async def test_unusable_answers_are_no_policy(
        policies: MtaSts, dns_server: DnsServer, policy_server: PolicyServer,
        answer: tuple[int, str, bytes, dict[str, str]]) -> None:
    publish(dns_server, "1")
    policy_server.answers["mta-sts.example.test"] = answer
    assert await policies.policy_for("example.test") is None
    assert policy_server.requests_for("mta-sts.example.test") == 1  # no redirect followed


async def test_policy_host_certificate_must_match(
        dns_server: DnsServer, ca: trustme.CA, ca_file: str, clock: Clock) -> None:
    impostor = PolicyServer(server_context(ca, "mta-sts.other.test")).start()
    try:
        dns_server.add("mta-sts.example.test", "A", impostor.host)
        publish(dns_server, "1")
        impostor.serve("mta-sts.example.test", ENFORCE)
        hops = NextHops([dns_server.address], 25, timeout=5)
        fetcher = HttpsFetcher(hops.addresses, trust_store(ca_file), impostor.port, 5)
        assert await MtaSts(hops.resolver, fetcher, clock).policy_for("example.test") is None
        assert impostor.requests == []  # the TLS handshake failed: no request was sent
    finally:
        impostor.stop()
