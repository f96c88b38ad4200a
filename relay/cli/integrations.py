"""cli.integrations: what applications use to hear from and talk to the relay, over the
running relay's admin API: `relayctl apikey create|list|revoke` (scoped API keys,
/v1/apikeys) and `relayctl webhooks list|add|remove|enable|secret` (/v1/webhooks)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from relay.cli.support import admin_client, config_option, one_line_errors
from relay.queue.apikeys import ApiScope
from relay.queue.events import EventType


@click.group()
def apikey() -> None:
    """Manage the admin API's keys (scopes: send, broadcast, read, admin)."""


@apikey.command(name="create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              type=click.Choice([s.value for s in ApiScope]),
              help="what the key may do (repeat for several)")
@click.option("--rate", "rate_limit", default="", help='requests per window, e.g. "1000/h"')
@config_option
@click.pass_context
@one_line_errors
def create_key(ctx: click.Context, name: str, scopes: tuple[str, ...], rate_limit: str) -> None:
    """Make a key and print it: it is shown this once (only a digest is kept)."""
    made = admin_client(ctx).request("POST", "/v1/apikeys", {
        "name": name, "scopes": list(scopes), "rate_limit": rate_limit})
    click.echo(made["key"])
    click.echo(f"API key {made['id']} ({', '.join(made['scopes'])}); it is not shown again",
               err=True)


@apikey.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per key")
@config_option
@click.pass_context
@one_line_errors
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """List the keys (never their secrets)."""
    for key in admin_client(ctx).request("GET", "/v1/apikeys")["keys"]:
        click.echo(json.dumps(key) if as_json else _key_line(key))


def _key_line(key: dict[str, Any]) -> str:
    state = "revoked" if key["revoked_at"] else "active"
    made = time.strftime("%Y-%m-%d", time.localtime(key["created_at"]))
    return (f"{key['id']}  {state:<7}  {','.join(key['scopes']):<20}  "
            f"{key['rate_limit'] or '-':<8}  {made}  {key['name']}")


@apikey.command(name="revoke")
@click.argument("key_id")
@config_option
@click.pass_context
@one_line_errors
def revoke_key(ctx: click.Context, key_id: str) -> None:
    """Revoke a key: refused from now on (it stays listed)."""
    admin_client(ctx).request("DELETE", f"/v1/apikeys/{key_id}")
    click.echo(f"API key {key_id} revoked")


@click.group()
def webhooks() -> None:
    """Manage the endpoints that get delivery events (relay.toml's are listed too)."""


@webhooks.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per endpoint")
@config_option
@click.pass_context
@one_line_errors
def list_webhooks(ctx: click.Context, as_json: bool) -> None:
    """List the endpoints and how their delivery stands."""
    for hook in admin_client(ctx).request("GET", "/v1/webhooks")["webhooks"]:
        if as_json:
            click.echo(json.dumps(hook))
            continue
        state = ("disabled" if hook["disabled_at"] else
                 "failing" if hook["failing_since"] else "ok")
        origin = "relay.toml" if hook["from_config"] else "api"
        click.echo(f"{hook['id']}  {state:<8}  {origin:<10}  "
                   f"{','.join(hook['events']) or 'all events'}  {hook['url']}")


@webhooks.command(name="add")
@click.argument("url")
@click.option("--event", "events", multiple=True,
              type=click.Choice([t.value for t in EventType]),
              help="only events of this type (repeat for several; default: all)")
@config_option
@click.pass_context
@one_line_errors
def add_webhook(ctx: click.Context, url: str, events: tuple[str, ...]) -> None:
    """Add an endpoint and print its signing secret (shown this once)."""
    made = admin_client(ctx).request("POST", "/v1/webhooks", {"url": url,
                                                             "events": list(events)})
    click.echo(made["secret"])
    click.echo(f"webhook {made['id']} added; its secret is not shown again", err=True)


@webhooks.command(name="remove")
@click.argument("webhook_id")
@config_option
@click.pass_context
@one_line_errors
def remove_webhook(ctx: click.Context, webhook_id: str) -> None:
    """Remove an endpoint added with `webhooks add` (relay.toml's are removed there)."""
    admin_client(ctx).request("DELETE", f"/v1/webhooks/{webhook_id}")
    click.echo(f"webhook {webhook_id} removed")


@webhooks.command(name="enable")
@click.argument("webhook_id")
@config_option
@click.pass_context
@one_line_errors
def enable_webhook(ctx: click.Context, webhook_id: str) -> None:
    """Deliver again to an endpoint disabled after failing, from where it stopped."""
    admin_client(ctx).request("POST", f"/v1/webhooks/{webhook_id}/enable")
    click.echo(f"webhook {webhook_id} enabled")


@webhooks.command(name="secret")
def make_secret() -> None:
    """Print a new signing secret for a [[webhooks]] secret_file."""
    from relay.notify.webhooks import new_secret  # here: relay.notify.webhooks is a large import

    click.echo(new_secret())
