"""delivery.mx: the next hops for a destination, from DNS (RFC 5321 section 5.1).

MX records sorted by preference with equal preferences shuffled; no MX means the domain's
own A/AAAA (implicit MX); a null MX (RFC 7505: one record, preference 0, exchange ".")
bounces at once with 5.1.10; a domain that does not exist, or cannot (an empty label, a
label over 63 octets: relay.core.addresses), bounces with 5.1.2; DNS trouble defers with 4.4.3.
In relayhost mode the one upstream is the only hop.

Answers are cached for their TTL, capped at MAX_CACHED_TTL, negative ones (NXDOMAIN, no
record of the type) for the time their zone's SOA gives (RFC 2308): dnspython's cache,
shared by every delivery worker of the process (MX, A, AAAA and MTA-STS's TXT). A node of
a cluster caches for itself. DNS has its own timeout (`[delivery] dns_timeout`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from relay.config import split_hostport
from relay.core import reply
from relay.core.addresses import domain_problem, is_ip
from relay.core.errors import DeliveryError, Scope


@dataclass(frozen=True)
class Hop:
    name: str  # the MX host name (or relayhost), for logs and Remote-MTA
    address: str  # the IP address to connect to
    port: int

    def __str__(self) -> str:
        # Postfix's host[address]:port; an address literal is not said twice.
        name = self.name.strip("[]").removeprefix("IPv6:") if self.name.startswith("[") \
            else self.name
        return f"{name}[{self.address}]:{self.port}"


MAX_CACHED_TTL = 3600.0  # seconds an answer is kept at most, whatever its TTL says
CACHED_ANSWERS = 10_000


class CappedCache(dns.resolver.LRUCache):
    """dnspython's LRU cache, keeping no answer longer than MAX_CACHED_TTL: a TTL of days
    would otherwise pin a changed MX until the process restarts."""

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        value.expiration = min(value.expiration, time.time() + MAX_CACHED_TTL)
        super().put(key, value)


def resolver(nameservers: Sequence[str], timeout: float = 10.0,
             cached: bool = False) -> dns.asyncresolver.Resolver:
    """dnspython's resolver on `nameservers` ("ip:port"), or on the system's; with
    `cached`, answers are kept for their TTL (CappedCache)."""
    if nameservers:
        made = dns.asyncresolver.Resolver(configure=False)
        made.nameservers = [
            dns.nameserver.Do53Nameserver(*split_hostport(ns, 53)) for ns in nameservers]
    else:
        made = dns.asyncresolver.Resolver()
    made.lifetime = timeout
    if cached:
        made.cache = CappedCache(CACHED_ANSWERS)
    return made


async def txt_records(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT records of `name`, each one's strings joined; none for NXDOMAIN or no TXT.
    Other DNS trouble raises DNSException."""
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(r.strings).decode("ascii", "replace") for r in answer]


class NextHops:
    """Resolves destinations with dnspython; `nameservers` ("ip:port") or the system's,
    its answers cached (a process that delivers asks again only when a TTL ran out)."""

    def __init__(self, nameservers: Sequence[str], port: int, timeout: float = 10.0,
                 rng: random.Random | None = None, cached: bool = True) -> None:
        self.resolver = resolver(nameservers, timeout, cached)
        self._port = port
        self._rng = rng or random.Random()

    async def for_domain(self, domain: str) -> list[Hop]:
        """Every address to try, best first; raise DeliveryError when there is none."""
        literal = _address_literal(domain)
        if literal is not None:
            return [Hop(domain, literal, self._port)]
        problem = domain_problem(domain)
        if problem is not None:  # no DNS answer can change that: bounce, never defer
            raise DeliveryError(reply.impossible_domain(problem), Scope.MESSAGE)
        exchanges = await self._mx_hosts(domain)
        if exchanges is None:  # implicit MX
            addresses = await self._addresses(domain)
            if not addresses:
                raise DeliveryError(reply.NO_SUCH_DOMAIN, Scope.MESSAGE)
            return [Hop(domain, a, self._port) for a in addresses]
        hops = []
        for host in exchanges:
            hops += [Hop(host, a, self._port) for a in await self.addresses(host)]
        if not hops:
            raise DeliveryError(reply.NO_MX_ADDRESS, Scope.SITE)
        return hops

    async def for_relayhost(self, relayhost: str) -> list[Hop]:
        host, port = split_hostport(relayhost, 25)  # "[host]:port" as in Postfix: no MX
        if is_ip(host):
            return [Hop(host, host, port)]
        addresses = await self._addresses(host)
        if not addresses:
            raise DeliveryError(reply.DNS_TEMPFAIL, Scope.SITE)
        return [Hop(host, a, port) for a in addresses]

    async def _mx_hosts(self, domain: str) -> list[str] | None:
        """MX exchanges in preference order, or None when the domain has no MX."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise DeliveryError(reply.NO_SUCH_DOMAIN, Scope.MESSAGE) from None
        except dns.resolver.NoAnswer:
            return None
        except dns.exception.DNSException:
            raise DeliveryError(reply.DNS_TEMPFAIL, Scope.SITE) from None
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
        if any(pref == 0 and host in ("", ".") for pref, host in records) and len(records) == 1:
            raise DeliveryError(reply.NULL_MX, Scope.MESSAGE)
        records = [(pref, host) for pref, host in records if host not in ("", ".")]
        self._rng.shuffle(records)  # a stable sort keeps equal preferences shuffled
        records.sort(key=lambda record: record[0])
        return [host for _, host in records]

    async def addresses(self, host: str) -> list[str]:
        """The A and AAAA addresses of `host`, or none when DNS has none or fails."""
        return await self._addresses(host, soft=True)

    async def _addresses(self, host: str, soft: bool = False) -> list[str]:
        if is_ip(host):
            return [host]
        found: list[str] = []
        failures = 0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
                found += [r.to_text() for r in answer]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                pass
            except dns.exception.DNSException:
                failures += 1
        if not found and failures and not soft:
            raise DeliveryError(reply.DNS_TEMPFAIL, Scope.SITE)
        return found


def _address_literal(domain: str) -> str | None:
    """`user@[192.0.2.1]` (RFC 5321 section 4.1.3) names its host directly."""
    if domain.startswith("[") and domain.endswith("]"):
        inner = domain[1:-1].removeprefix("IPv6:").removeprefix("ipv6:")
        return inner if is_ip(inner) else None
    return None
