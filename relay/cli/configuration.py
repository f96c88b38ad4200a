"""cli.configuration: `relayctl config check|show`, the configuration as the relay reads it
(relay.toml, then the RELAY_* environment), like `postconf` and `postconf -n`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import BaseModel

from relay.cli.support import config_option, load_config, one_line_errors
from relay.config import NO_FILE, Config, resolve_paths
from relay.core.errors import RelayError
from relay.core.units import Rate, format_duration, parse_duration

MASK = "********"


@click.group(name="config")
def config_group() -> None:
    """The configuration: check it, show it."""


@config_group.command()
@config_option
@click.pass_context
@one_line_errors
def check(ctx: click.Context) -> None:
    """Validate relay.toml, the policies, and the files they name."""
    # Imported here: they are large, and every other relayctl command would pay for them.
    from relay.cli.service_user import check_readable
    from relay.delivery.client import relayhost_credentials
    from relay.delivery.mta_sts import trust_store
    from relay.policy import load_policies
    from relay.smtp.listeners import ServerTls

    config = load_config(ctx)
    policies = load_policies(config.policies.path)
    ServerTls(config.smtp)  # loads the certificate and key, or says why not
    relayhost_credentials(config.delivery)
    trust_store(config.delivery.ca_file)
    unreadable = check_readable(config, policies)  # root reads all; the relay may not
    if unreadable:
        raise RelayError(f"config check: {unreadable}")
    click.echo(f"{config.source}: ok (policies in {config.policies.path}: ok)")


@config_group.command()
@click.option("-n", "--changed", is_flag=True,
              help="only the keys whose value is not the default (postconf -n)")
@config_option
@click.pass_context
@one_line_errors
def show(ctx: click.Context, changed: bool) -> None:
    """Print the effective configuration as TOML, environment overrides applied and
    secrets masked (postconf)."""
    config = load_config(ctx)
    base = (Path(config.source).resolve().parent if config.source != NO_FILE
            else Path.cwd())  # where relative paths were resolved
    # The sections' own defaults: Config() would read the environment.
    defaults = resolve_paths(Config.model_construct(**{
        name: type(getattr(config, name))() for name in Config.model_fields
        if isinstance(getattr(config, name), BaseModel)}), base, config.source)
    click.echo(f"# {config.source}, with RELAY_* overrides; secrets masked")
    for name in Config.model_fields:
        section = getattr(config, name)
        if isinstance(section, list):  # [[webhooks]]: none by default, so always shown
            for table in section:
                click.echo(f"\n[[{name}]]\n" + "\n".join(
                    f"{key} = {_toml(shown(table, key, value))}" for key, value in table))
            continue
        if not isinstance(section, BaseModel):
            continue
        lines = [f"{key} = {_toml(shown(section, key, value))}"
                 for key, value in section if not changed
                 or value != getattr(getattr(defaults, name), key)]
        if lines:
            click.echo(f"\n[{name}]\n" + "\n".join(lines))


def shown(section: BaseModel, key: str, value: Any) -> Any:
    """`value` as it may be shown: a password inside a DSN, and any secret kept in the
    configuration itself, masked; durations as durations."""
    if isinstance(value, float) and _is_duration(section, key):
        return format_duration(value)
    if not isinstance(value, str) or not value or key.endswith("_file"):
        return value
    if "dsn" in key:
        return _masked_dsn(value)
    if any(word in key for word in ("password", "secret", "token")):
        return MASK
    return value


def _masked_dsn(dsn: str) -> str:
    password = urlsplit(dsn).password if "://" in dsn else None
    if password:
        dsn = dsn.replace(f":{password}@", f":{MASK}@", 1)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", rf"\g<1>{MASK}", dsn)


def _is_duration(section: BaseModel, field: str) -> bool:
    metadata = type(section).model_fields[field].metadata
    return any(getattr(item, "func", None) is parse_duration for item in metadata)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, Rate | Path):
        value = str(value)
    return json.dumps(value, ensure_ascii=False)
