"""Next-hop resolution against a real DNS server on loopback, and its cache."""

from __future__ import annotations

import random
import time

import dns.rdatatype as dns_rdatatype
import pytest

from relay.core.errors import DeliveryError
from relay.delivery import NextHops
from relay.delivery.mx import MAX_CACHED_TTL, CappedCache
from tests.support.dns_server import DnsServer


async def test_preference_order_with_equal_preferences_shuffled(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 a.example.test.", "10 b.example.test.",
                   "20 c.example.test.")
    for host, address in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")):
        dns_server.add(f"{host}.example.test", "A", address)
    dns_server.add("b.example.test", "AAAA", "::1")
    firsts = set()
    for seed in range(12):
        hops = await NextHops([dns_server.address], 25, rng=random.Random(seed)).for_domain(
            "example.test")
        names = [hop.name for hop in hops]
        assert sorted(names[:3]) == ["a.example.test", "b.example.test", "b.example.test"]
        assert names[3:] == ["c.example.test"] and hops[-1].address == "127.0.0.4"
        firsts.add(names[0])
    assert firsts == {"a.example.test", "b.example.test"}


async def test_errors_carry_their_verdict(dns_server: DnsServer) -> None:
    dns_server.add("nullmx.test", "MX", "0 .")
    dns_server.add("empty.test", "TXT", '"no mail here"')
    dns_server.servfail.add("broken.test")
    hops = NextHops([dns_server.address], 25)
    verdicts = {}
    long_label, long_name = "x" * 64 + ".test", ".".join(["x" * 60] * 5)
    for domain in ("nullmx.test", "missing.test", "empty.test", "broken.test", "ok..test",
                   long_label, long_name):
        with pytest.raises(DeliveryError) as error:
            await hops.for_domain(domain)
        verdicts[domain] = str(error.value.reply)[:10]
    assert verdicts == {"nullmx.test": "556 5.1.10", "missing.test": "550 5.1.2 ",
                        "empty.test": "550 5.1.2 ", "broken.test": "451 4.4.3 ",
                        # names DNS cannot have bounce at once instead of being retried
                        "ok..test": "550 5.1.2 ", long_label: "550 5.1.2 ",
                        long_name: "550 5.1.2 "}


async def test_address_literals_and_relayhost(dns_server: DnsServer) -> None:
    dns_server.add("smtp.provider.test", "A", "127.0.0.5")
    hops = NextHops([dns_server.address], 25)
    assert [str(h) for h in await hops.for_domain("[127.0.0.9]")] == [
        "127.0.0.9[127.0.0.9]:25"]  # as Postfix says it: the literal once
    assert [str(h) for h in await hops.for_relayhost("[smtp.provider.test]:587")] == [
        "smtp.provider.test[127.0.0.5]:587"]


async def test_answers_are_cached_for_their_ttl_and_negative_ones_per_rfc_2308() -> None:
    dns = DnsServer(ttl=300)
    dns.add("example.test", "MX", "10 mx1.example.test.")
    dns.add("mx1.example.test", "A", "127.0.0.2")
    dns.start()
    try:
        hops = NextHops([dns.address], 25)
        for _ in range(20):
            assert [h.address for h in await hops.for_domain("example.test")] == ["127.0.0.2"]
            with pytest.raises(DeliveryError):
                await hops.for_domain("nowhere.test")  # NXDOMAIN, cached by its SOA
        assert [dns.asked("example.test", "MX"), dns.asked("mx1.example.test", "A"),
                dns.asked("mx1.example.test", "AAAA"), dns.asked("nowhere.test", "MX")] == [
            1, 1, 1, 1]  # AAAA: a name without one, cached as negative too
        uncached = NextHops([dns.address], 25, cached=False)
        await uncached.for_domain("example.test")
        assert dns.asked("example.test", "MX") == 2
    finally:
        dns.stop()


async def test_no_answer_is_kept_longer_than_the_cap() -> None:
    dns = DnsServer(ttl=7 * 86400)
    dns.add("mx1.example.test", "A", "127.0.0.2")
    dns.start()
    try:
        hops = NextHops([dns.address], 25)
        await hops.addresses("mx1.example.test")
        cache = hops.resolver.cache
        assert isinstance(cache, CappedCache)
        [answer] = [node.value for node in cache.data.values()
                    if node.value.rdtype == dns_rdatatype.A]
        assert answer.expiration <= time.time() + MAX_CACHED_TTL
    finally:
        dns.stop()
