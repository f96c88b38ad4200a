"""cli.support: what every relayctl command shares: -c FILE wherever it is given, the
configuration and admin API client it names, and one-line errors with exit status 2 (1
for an id that is not there)."""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from relay import config as config_module
from relay.cli.client import AdminClient
from relay.config import Config
from relay.core.errors import ConfigError, RelayError

F = TypeVar("F", bound=Callable[..., Any])


class LazyCommands(click.Group):
    """A group whose commands are imported when they run (`lazy`: name -> "module:attr"):
    `relayctl queue list` need not load the SMTP client, the DKIM signer and PostgreSQL's
    driver first."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy and cmd_name not in self.commands:
            module, _, attribute = self._lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


class OneLineUsageErrors(LazyCommands):
    """A command group whose usage errors (a bad option value, a missing argument) are
    one line on stderr and exit status 2, like every other relayctl error, instead of
    click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "relayctl"
            click.echo(f"{where}: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("relayctl: aborted", err=True)
            sys.exit(1)


def one_line_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RelayError as exc:
            click.echo(f"relayctl: {exc}", err=True)
            sys.exit(getattr(exc, "exit_status", 2))

    return wrapper  # type: ignore[return-value]


def _remember_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:  # `relayctl -c FILE serve` and `relayctl serve -c FILE` alike
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["config_path"] = value


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False), expose_value=False,
    callback=_remember_config,
    help="relay.toml to use (default: $RELAY_CONFIG, ./relay.toml, /etc/relay/relay.toml)")


def load_config(ctx: click.Context) -> Config:
    root = ctx.find_root()
    return config_module.load((root.obj or {}).get("config_path"))


def admin_client(ctx: click.Context) -> AdminClient:
    """The running relay's admin API, at the address and with the token its configuration
    names: without a configuration file, defaults would point at a relay that is not
    there, so that is the error."""
    config = load_config(ctx)
    if config.source == config_module.NO_FILE:
        raise ConfigError("no configuration file found (looked for -c FILE, $RELAY_CONFIG, "
                          f"{Path.cwd() / 'relay.toml'}, /etc/relay/relay.toml): the admin "
                          "API's address and token come from it")
    return AdminClient.from_config(config)


def date_of(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                                   time.localtime(stamp))
