"""delivery.mta_sts: SMTP MTA Strict Transport Security (RFC 8461) for recipient domains.

A domain that publishes `_mta-sts.<domain>` TXT "v=STSv1; id=..." (section 3.1) serves its
policy at https://mta-sts.<domain>/.well-known/mta-sts.txt (section 3.3). The policy is
fetched over HTTPS with a validated certificate, no redirects and at most 64 KB, parsed
(section 3.2) and cached for its max_age; the policy in force follows section 5.1: a new id
in DNS fetches it again, a failed fetch or a vanished TXT record keeps an unexpired cached
policy, and without one the domain is treated as having no policy. A failed fetch is not
retried for FETCH_RETRY seconds, so a broken policy host does not slow every connection.

The delivery agent applies a policy in "enforce" mode by using only MX hosts that match its
`mx` patterns (section 4.1), each over STARTTLS with a certificate valid for the host's name
in the configured trust store (section 4.2), and defers otherwise; "testing" logs what
enforce would refuse (MX hosts, certificates) and delivers as usual. The cache is kept in
memory and in a file beside the spool (PolicyStore), so a restart does not open a window
in which an attacker who blocks the policy host could strip TLS (section 10.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import httpx

from relay.config import DeliverySection
from relay.core.errors import ConfigError
from relay.delivery.mx import NextHops, txt_records

log = logging.getLogger("relay.mta_sts")

Mode = Literal["enforce", "testing", "none"]
WELL_KNOWN = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 64 * 1024  # section 3.3: larger bodies are not policies
MAX_AGE_LIMIT = 31_557_600  # section 3.2: one year
FETCH_RETRY = 300.0  # seconds before a failed fetch for the same domain and id is tried again
MAX_CACHED_DOMAINS = 100_000

_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_FIELD = re.compile(r"([A-Za-z0-9_.-]+)=([\x21-\x3a\x3c\x3e-\x7e]{1,})")
_POLICY_LINE = re.compile(r"([A-Za-z0-9_]+)[ \t]*:[ \t]*(.*?)[ \t]*")


class PolicyError(ValueError):
    """A policy that cannot be fetched or read; the message says why, in one line."""


@dataclass(frozen=True)
class Policy:
    id: str  # the id the TXT record had when this policy was fetched
    mode: Mode
    mx: tuple[str, ...]  # host names and "*.domain" patterns, lower case
    max_age: int  # seconds

    def allows(self, host: str) -> bool:
        """Whether `host` is a valid MX host for this policy (section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """"mail.example.com" matches itself; "*.example.com" matches exactly one more label.
    An internationalized host name is compared in its A-labels, as policies write it."""
    host = host.lower().rstrip(".")
    if not host.isascii():
        try:
            host = a_labels(host).lower()
        except dns.exception.DNSException:
            return False
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def a_labels(name: str) -> str:
    """`name` as DNS and TLS know it (an internationalized name in its A-labels);
    DNSException when it is not a valid name."""
    return dns.name.from_text(name).to_text(omit_final_dot=True)


def txt_policy_id(records: list[str]) -> str | None:
    """The id of the one valid "v=STSv1" record among `records`, else None (section 3.1:
    records not starting with v=STSv1 are ignored; more than one means no policy)."""
    found = [r for r in records if re.match(r"v=STSv1[ \t]*(;|$)", r)]
    if len(found) != 1:
        return None
    fields: dict[str, str] = {}
    for part in found[0].split(";"):
        match = _TXT_FIELD.fullmatch(part.strip())
        if match is not None:
            fields.setdefault(match.group(1), match.group(2))
    record_id = fields.get("id", "")
    return record_id if _TXT_ID.fullmatch(record_id) else None


async def published_id(resolver: dns.asyncresolver.Resolver, domain: str) -> str | None:
    """The policy id `domain` publishes in `_mta-sts.<domain>` TXT, or None; DNS trouble
    raises DNSException."""
    return txt_policy_id(await txt_records(resolver, f"_mta-sts.{domain}"))


def parse_policy(text: str, policy_id: str) -> Policy:
    """A policy body (section 3.2): "key: value" lines ending in LF or CRLF."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        match = _POLICY_LINE.fullmatch(line)
        if match is None:
            continue  # blank lines and garbage: a lenient reader, as section 3.2 allows
        key, value = match.group(1).lower(), match.group(2)
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    max_age = fields.get("max_age", "")
    if not re.fullmatch(r"\d{1,10}", max_age) or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age!r} is not a number of seconds up to one year")
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return Policy(policy_id, mode, tuple(mx), int(max_age))  # type: ignore[arg-type]


def trust_store(ca_file: str) -> ssl.SSLContext:
    """A context that validates certificates and names against `ca_file` (PEM), or the
    system's CA certificates when it is empty; TLS 1.2 at least (section 4.2)."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"delivery.ca_file: {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class PolicyFetcher(Protocol):
    async def fetch(self, domain: str) -> str:
        """The policy text of `domain`; PolicyError when there is none to be had."""


class HttpsFetcher:
    """GET https://mta-sts.<domain>/.well-known/mta-sts.txt (section 3.3), the host name
    resolved by the relay's own resolver, its certificate validated by `context`."""

    def __init__(self, addresses: Callable[[str], Awaitable[list[str]]],
                 context: ssl.SSLContext, port: int = 443, timeout: float = 30.0) -> None:
        self._addresses = addresses
        self._context = context
        self._port = port
        self._timeout = timeout

    async def fetch(self, domain: str) -> str:
        try:
            host = a_labels(f"mta-sts.{domain}")
        except dns.exception.DNSException as exc:
            raise PolicyError(f"mta-sts.{domain}: not a host name ({exc})") from None
        failures = []
        # trust_env=False: no proxy from the environment stands between us and the domain.
        async with httpx.AsyncClient(verify=self._context, timeout=self._timeout,
                                     follow_redirects=False, trust_env=False) as client:
            for address in await self._addresses(host):
                try:
                    return await self._get(client, host, address)
                except (httpx.HTTPError, OSError) as exc:
                    failures.append(f"{address}: {exc or type(exc).__name__}")
        raise PolicyError(f"{host}: " + ("; ".join(failures) or "no address"))

    async def _get(self, client: httpx.AsyncClient, host: str, address: str) -> str:
        url = httpx.URL(scheme="https", host=address, port=self._port, path=WELL_KNOWN)
        authority = host if self._port == 443 else f"{host}:{self._port}"
        async with client.stream("GET", url, headers={"Host": authority},
                                 extensions={"sni_hostname": host}) as response:
            if response.status_code != 200:  # redirects included (section 3.3)
                raise PolicyError(f"{host}: HTTP {response.status_code}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type.lower() != "text/plain":
                raise PolicyError(f"{host}: media type {media_type!r}, not text/plain")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError(f"{host}: policy larger than {MAX_POLICY_BYTES} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(f"{host}: policy is not UTF-8") from None


@dataclass(frozen=True)
class _Cached:
    policy: Policy
    fetched: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.policy.max_age

    def stale(self, now: float) -> bool:
        """Past half its max_age: fetch again when next used, keep it if that fails."""
        return now >= self.fetched + self.policy.max_age / 2


class PolicyStore:
    """The cache on disk: one JSON line per fetched policy, the last line of a domain wins.
    Compacted when loaded at start; a file that cannot be written only costs a warning."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, now: float) -> dict[str, _Cached]:
        found: dict[str, _Cached] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return found
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("mta-sts: %s: cannot read the policy cache: %s", self.path, exc)
            return found
        for line in lines:
            try:
                entry = json.loads(line)
                policy = Policy(entry["id"], entry["mode"], tuple(entry["mx"]),
                                int(entry["max_age"]))
                found[entry["domain"]] = _Cached(policy, float(entry["fetched"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        found = {domain: c for domain, c in found.items() if not c.expired(now)}
        self._rewrite(found)
        return found

    def add(self, domain: str, cached: _Cached) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(_line(domain, cached))
        except OSError as exc:
            log.warning("mta-sts: %s: cannot keep the policy of %s: %s", self.path, domain, exc)

    def _rewrite(self, entries: dict[str, _Cached]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            temporary.write_text("".join(_line(d, c) for d, c in entries.items()),
                                 encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("mta-sts: %s: cannot compact the policy cache: %s", self.path, exc)


def _line(domain: str, cached: _Cached) -> str:
    return json.dumps({"domain": domain, "fetched": cached.fetched,
                       **asdict(cached.policy)}) + "\n"


class MtaSts:
    """The policy in force for each recipient domain, fetched once and shared by every
    delivery worker of this process. `clock` is wall-clock time: cached entries outlive
    the process through `store`. `fetched` hears of every fetch and whether it worked."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, fetcher: PolicyFetcher,
                 clock: Callable[[], float] = time.time, store: PolicyStore | None = None,
                 fetched: Callable[[bool], None] = lambda ok: None) -> None:
        self._resolver = resolver
        self._fetcher = fetcher
        self._clock = clock
        self._store = store
        self._fetched = fetched
        self._cache: OrderedDict[str, _Cached] = OrderedDict(
            store.load(clock()) if store is not None else {})
        self._failed: dict[tuple[str, str], float] = {}  # (domain, id) -> retry after
        self._fetching: dict[str, asyncio.Future[Policy | None]] = {}
        self._lookups_failing: set[str] = set()  # logged when they fail and again when not

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy to apply to `domain` now, or None when it has none."""
        domain = domain.lower().rstrip(".")
        if domain.startswith("["):
            return None  # an address literal names its host: no MX, no policy
        now = self._clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            del self._cache[domain]
            cached = None
        current = cached.policy if cached is not None else None
        try:
            policy_id = await published_id(self._resolver, domain)
        except dns.exception.DNSException as exc:
            self._lookup_failed(domain, exc, current)
            return current  # DNS trouble: what we know still holds (section 5.1)
        if domain in self._lookups_failing:
            self._lookups_failing.discard(domain)
            log.info("mta-sts: %s: the policy's TXT record can be looked up again", domain)
        if policy_id is None:
            return current
        if cached is not None and cached.policy.id == policy_id and not cached.stale(now):
            return current
        if self._failed.get((domain, policy_id), 0.0) > now:
            return current
        return await self._fetch_once(domain, policy_id, current)

    def _lookup_failed(self, domain: str, exc: dns.exception.DNSException,
                       current: Policy | None) -> None:
        """One line when a domain's TXT lookup starts failing, not one per message."""
        if domain in self._lookups_failing:
            return
        self._lookups_failing.add(domain)
        log.warning("mta-sts: %s: cannot look up _mta-sts.%s TXT (%s): %s", domain, domain,
                    exc.__class__.__name__,
                    f"policy id {current.id} (cached) still holds" if current is not None
                    else "no policy known, delivering without one")

    async def _fetch_once(self, domain: str, policy_id: str,
                          current: Policy | None) -> Policy | None:
        """One fetch per domain at a time; concurrent callers share its result."""
        pending = self._fetching.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(domain, policy_id, current))
            self._fetching[domain] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(domain, None))
        return await asyncio.shield(pending)

    async def _fetch(self, domain: str, policy_id: str, current: Policy | None) -> Policy | None:
        try:
            policy = parse_policy(await self._fetcher.fetch(domain), policy_id)
        except PolicyError as exc:
            self._fetched(False)
            now = self._clock()
            if len(self._failed) >= MAX_CACHED_DOMAINS:
                self._failed = {key: until for key, until in self._failed.items() if until > now}
            self._failed[(domain, policy_id)] = now + FETCH_RETRY
            log.warning("mta-sts: %s: no policy fetched (id %s): %s%s", domain, policy_id, exc,
                        "; the cached one stays" if current is not None else "")
            return current
        self._fetched(True)
        self._failed.pop((domain, policy_id), None)
        cached = self._cache[domain] = _Cached(policy, self._clock())
        if self._store is not None:
            self._store.add(domain, cached)
        self._cache.move_to_end(domain)
        while len(self._cache) > MAX_CACHED_DOMAINS:
            self._cache.popitem(last=False)
        log.info("mta-sts: %s: policy id %s, mode %s, mx %s, max_age %d", domain, policy.id,
                 policy.mode, ",".join(policy.mx) or "-", policy.max_age)
        return policy


@dataclass(frozen=True)
class StrictTransport:
    """MTA-STS for the delivery agent: the policies, and the trust store for MX hosts."""

    policies: MtaSts
    trust: ssl.SSLContext

    @classmethod
    def configured(cls, settings: DeliverySection, hops: NextHops, spool: Path,
                   fetched: Callable[[bool], None] = lambda ok: None
                   ) -> StrictTransport | None:
        """As `[delivery]` says, on the resolver of `hops`, policies kept in `spool`: None
        when mta_sts is off; ConfigError for a ca_file that cannot be read."""
        if not settings.mta_sts:
            return None
        trust = trust_store(settings.ca_file)
        fetcher = HttpsFetcher(hops.addresses, trust, settings.mta_sts_port,
                               settings.connect_timeout)
        store = PolicyStore(spool / "mta-sts.jsonl")
        return cls(MtaSts(hops.resolver, fetcher, store=store, fetched=fetched), trust)
