"""cli.mta_sts: `relayctl mta-sts DOMAIN`: the MTA-STS policy a recipient domain publishes
now (fetched afresh, as the relay would with `[delivery]`'s resolver, port and trust
store) and which of its MX hosts an enforced policy lets the relay use."""

from __future__ import annotations

import asyncio

import click
import dns.exception

from relay.cli.support import config_option, load_config, one_line_errors
from relay.config import DeliverySection
from relay.core.errors import DeliveryError, RelayError
from relay.delivery.mta_sts import (
    HttpsFetcher,
    Policy,
    PolicyError,
    parse_policy,
    published_id,
    trust_store,
)
from relay.delivery.mx import NextHops


@click.command(name="mta-sts")
@click.argument("domain")
@config_option
@click.pass_context
@one_line_errors
def mta_sts(ctx: click.Context, domain: str) -> None:
    """Fetch DOMAIN's MTA-STS policy and match its MX hosts against it."""
    domain = domain.lower().rstrip(".")
    policy, mx_hosts = asyncio.run(_look_up(load_config(ctx).delivery, domain))
    click.echo(f"{domain}: policy id {policy.id}, mode {policy.mode}, "
               f"max_age {policy.max_age}s, mx {', '.join(policy.mx) or '-'}")
    for name in mx_hosts:
        verdict = ("matches" if policy.allows(name)
                   else "does not match" + (": not used" if policy.mode == "enforce" else ""))
        click.echo(f"  MX {name}: {verdict}")


async def _look_up(settings: DeliverySection, domain: str) -> tuple[Policy, list[str]]:
    """The policy and the MX host names, best first; RelayError saying what is missing."""
    hops = NextHops(settings.nameservers, settings.port, timeout=settings.dns_timeout)
    fetcher = HttpsFetcher(hops.addresses, trust_store(settings.ca_file),
                           settings.mta_sts_port, settings.connect_timeout)
    try:
        policy_id = await published_id(hops.resolver, domain)
    except dns.exception.DNSException as exc:
        raise RelayError(f"mta-sts: cannot look up _mta-sts.{domain}: {exc}") from exc
    if policy_id is None:
        raise RelayError(f"mta-sts: {domain} publishes no policy (no valid _mta-sts TXT record)")
    try:
        policy = parse_policy(await fetcher.fetch(domain), policy_id)
    except PolicyError as exc:
        raise RelayError(f"mta-sts: {domain}: policy id {policy_id}: {exc}") from exc
    try:
        hosts = await hops.for_domain(domain)
    except DeliveryError as exc:
        raise RelayError(f"mta-sts: {domain}: no MX hosts: {exc.reply}") from exc
    return policy, list(dict.fromkeys(hop.name for hop in hosts))
