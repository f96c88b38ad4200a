"""cli.message_keys: `relayctl dkim keygen|check` and `relayctl pgp import|list`: the keys that
policies/dkim.toml and policies/pgp.toml use."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import click

from relay.cli.service_user import service_user
from relay.cli.support import config_option, load_config, one_line_errors
from relay.core.addresses import dkim_key_name_problem
from relay.core.errors import RelayError
from relay.policy import load_policies


@click.group()
def dkim() -> None:
    """DKIM signing keys (policies/dkim.toml)."""


@dkim.command(name="keygen")
@click.argument("domain")
@click.argument("selector")
@click.option("--algorithm", type=click.Choice(["rsa-sha256", "ed25519-sha256"]),
              default="rsa-sha256", show_default=True,
              help="RSA is what every verifier knows; Ed25519 (RFC 8463) goes beside it")
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True,
              help="RSA key size")
@click.option("--directory", type=click.Path(file_okay=False),
              help="where the key file goes (default: <policies>/dkim)")
@config_option
@click.pass_context
@one_line_errors
def dkim_keygen(ctx: click.Context, domain: str, selector: str, algorithm: str, bits: int,
                directory: str | None) -> None:
    """Write a new private key and print its DNS TXT record. The key is mode 0600; run by
    root for an installed relay, 0640 and of the relay's group, so that it can read it."""
    from relay.delivery import dkim as dkim_keys

    problem = dkim_key_name_problem(domain, selector)
    if problem:
        raise RelayError(f"dkim keygen: {problem}")

    config = load_config(ctx)
    target_dir = Path(directory) if directory else config.policies.path / "dkim"
    # Run by root for an installed relay: the key is root's, readable by the relay's group
    # (0640 root:relay), as the policies are; else the caller's alone (0600).
    user = service_user(config)
    if not target_dir.exists():
        target_dir.mkdir(parents=True)
        target_dir.chmod(0o750 if user else 0o700)  # whatever the umask
        if user:
            os.chown(target_dir, 0, user.gid)
    suffix = "key" if algorithm == "ed25519-sha256" else "pem"
    target = target_dir / f"{domain}.{selector}.{suffix}"
    private = dkim_keys.generate_key(algorithm, bits)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RelayError(f"dkim keygen: {target} exists; choose another selector") from None
    with os.fdopen(fd, "wb") as file:
        if user:
            os.fchown(file.fileno(), 0, user.gid)
            os.fchmod(file.fileno(), 0o640)
        file.write(private)
    shared = f" (0640 root:{user.group}, for the relay's user {user.name})" if user else ""
    click.echo(f"wrote {target}{shared}")
    click.echo("publish in DNS:")
    click.echo(dkim_keys.dns_record(domain, selector, algorithm,
                                    dkim_keys.public_key(private, algorithm)))
    click.echo("and add to dkim.toml:")
    click.echo(f'[[keys]]\ndomain = "{domain}"\nselector = "{selector}"\n'
               f'private_key = "{target}"\nalgorithm = "{algorithm}"')


@dkim.command(name="check")
@click.argument("domain")
@click.argument("selector")
@config_option
@click.pass_context
@one_line_errors
def dkim_check(ctx: click.Context, domain: str, selector: str) -> None:
    """Look the published record up and say whether it matches the key in dkim.toml."""
    from relay.delivery import dkim as dkim_keys
    from relay.delivery.mx import resolver

    config = load_config(ctx)
    keys = [k for k in load_policies(config.policies.path).dkim.keys
            if k.domain.lower() == domain.lower() and k.selector == selector]
    if not keys:
        raise RelayError(f"dkim check: no key for {domain} selector {selector} in dkim.toml")
    expected = dkim_keys.public_key(keys[0].key, keys[0].algorithm)
    name = f"{selector}._domainkey.{domain}"
    try:
        published = asyncio.run(dkim_keys.published_key(
            domain, selector, resolver(config.delivery.nameservers)))
    except Exception as exc:
        raise RelayError(f"dkim check: cannot look up {name}: {exc}") from exc
    if published is None:
        raise RelayError(f"dkim check: {name} has no DKIM record")
    if published != expected:
        raise RelayError(f"dkim check: {name} publishes another key than "
                         f"{keys[0].private_key}")
    click.echo(f"{name}: the published key matches {keys[0].private_key}")


@click.group()
def pgp() -> None:
    """Recipients' PGP keys (the keyring of policies/pgp.toml)."""


def _keyring(ctx: click.Context) -> Path:
    home = load_policies(load_config(ctx).policies.path).pgp.keyring
    if home is None:
        raise RelayError("pgp: policies/pgp.toml names no keyring")
    return home


@pgp.command(name="import")
@click.argument("key_file", type=click.File("rb"))
@config_option
@click.pass_context
@one_line_errors
def pgp_import(ctx: click.Context, key_file: Any) -> None:
    """Import public keys (ASCII-armored or binary) into the keyring."""
    from relay.delivery import pgp as pgp_keys

    try:
        fingerprints = pgp_keys.import_keys(_keyring(ctx), key_file.read())
    except ValueError as exc:
        raise RelayError(f"pgp import: {exc}") from None
    for fingerprint in fingerprints:
        click.echo(f"imported {fingerprint}")


@pgp.command(name="list")
@config_option
@click.pass_context
@one_line_errors
def pgp_list(ctx: click.Context) -> None:
    """The keys in the keyring: fingerprint, user ids, expiry, whether they encrypt."""
    from relay.delivery import pgp as pgp_keys

    for key in pgp_keys.list_keys(_keyring(ctx)):
        expires = time.strftime("%Y-%m-%d", time.gmtime(int(key.expires))) \
            if key.expires else "never"
        usable = "encrypts" if key.can_encrypt else "cannot encrypt"
        click.echo(f"{key.fingerprint}  {', '.join(key.uids)}  expires {expires}  {usable}")
