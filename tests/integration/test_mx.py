"""Next-hop resolution against a real DNS server on loopback."""

from __future__ import annotations

import random

import pytest

from relay.core.errors import DeliveryError
from relay.delivery import NextHops
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
