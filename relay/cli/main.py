"""cli.main: the `relayctl` command group, and the commands that are not clients of the
admin API: serve, config, db, hash-password. The others come from their topic's module.

Every failure is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import click

from relay.cli.support import (
    OneLineUsageErrors,
    config_option,
    date_of,
    load_config,
    one_line_errors,
)
from relay.core.errors import RelayError

if TYPE_CHECKING:
    from relay.config import Config

# Each topic's commands, imported when they run (cli.support.LazyCommands).
TOPICS = {
    "config": "relay.cli.configuration:config_group",
    "queue": "relay.cli.queue:queue",
    "events": "relay.cli.history:events",
    "apikey": "relay.cli.integrations:apikey",
    "webhooks": "relay.cli.integrations:webhooks",
    "send": "relay.cli.send:send",
    "broadcast": "relay.cli.broadcast:broadcast",
    "suppression": "relay.cli.broadcast:suppression",
    "dkim": "relay.cli.message_keys:dkim",
    "pgp": "relay.cli.message_keys:pgp",
    "mta-sts": "relay.cli.mta_sts:mta_sts",
}


@click.group(cls=OneLineUsageErrors, lazy=TOPICS)
@click.version_option(package_name="relay", prog_name="relayctl")
@config_option
def main() -> None:
    """Manage the relay."""


@main.command()
@config_option
@click.pass_context
@one_line_errors
def serve(ctx: click.Context) -> None:
    """Run the relay in the foreground."""
    from relay.runtime import tuning
    from relay.runtime.logsetup import configure_logging, event_loop_runner
    from relay.server import serve as run

    tuning.tune_allocator()
    config = load_config(ctx)
    flush_log = configure_logging(config.log)
    try:
        event_loop_runner()(run(config))
    except OSError as exc:
        raise RelayError(f"cannot start: {exc}") from exc
    finally:
        flush_log()  # the log ends before a one-line error is printed


@main.group(name="db")
def db_group() -> None:
    """The queue's database: the local index or the cluster's PostgreSQL."""


@db_group.command(name="status")
@config_option
@click.pass_context
@one_line_errors
def db_status(ctx: click.Context) -> None:
    """Say which schema version the queue's database has; for a cluster, list the nodes
    by name with their last heartbeat (gone: none within a lease)."""
    config = load_config(ctx)
    if config.queue.backend == "postgres":
        _cluster_status(config)
        return
    from relay.queue.local.schema import NEWEST, index_status

    path = config.queue.path / "index.sqlite3"
    current = index_status(path)
    if current is None:
        click.echo(f"{path}: no index yet (the relay makes it when it first starts)")
        return
    click.echo(f"{path} (local): schema version {current} of {NEWEST}, "
               f"{_migration_state(current, NEWEST)}")


def _migration_state(current: int, newest: int) -> str:
    return ("up to date" if current == newest else
            f"{newest - current} migrations to apply (a starting relay applies them)")


def _cluster_status(config: Config) -> None:
    from relay.queue.postgres.nodes import cluster_status
    from relay.queue.postgres.pool import database_dsn, where

    dsn = database_dsn(config.queue)
    current, newest, nodes = asyncio.run(cluster_status(dsn, config.queue.lease))
    click.echo(f"{where(dsn)}: schema version {current} of {newest}, "
               f"{_migration_state(current, newest)}")
    for node in nodes:
        click.echo(f"node {node.name}: {'gone' if node.gone else 'running'}, last heartbeat "
                   f"{date_of(node.heartbeat_at)}, started {date_of(node.started_at)}")


@main.command(name="hash-password")
@one_line_errors
def hash_password_command() -> None:
    """Read a password on stdin and print its hash for policies/access.toml."""
    from relay.passwords import hash_password

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise RelayError("no password on standard input")
    click.echo(hash_password(password))
