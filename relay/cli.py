"""cli: `relayctl`, the operator's command (serve, queue, send, config, hash-password;
broadcast and suppression in cli_broadcast, dkim and pgp in cli_keys, mta-sts in
cli_mta_sts).

Queue commands mirror Postfix's postqueue/postsuper and talk only to the running relay's
admin API. Every failure is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import os
import sys
import time
from typing import Any

import click

from relay.cli_broadcast import broadcast, suppression
from relay.cli_keys import dkim, pgp
from relay.cli_mta_sts import mta_sts
from relay.cli_support import admin_client, config_option, load_config, one_line_errors
from relay.delivery.client import relayhost_credentials
from relay.delivery.mta_sts import trust_store
from relay.errors import RelayError
from relay.listeners import ServerTls
from relay.logsetup import configure_logging, event_loop_runner
from relay.passwords import hash_password
from relay.policy import load_policies
from relay.queue.postgres_pool import database_dsn, schema_status, where


@click.group()
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
    from relay.server import serve as run

    config = load_config(ctx)
    flush_log = configure_logging(config)
    try:
        event_loop_runner()(run(config))
    except OSError as exc:
        raise RelayError(f"cannot start: {exc}") from exc
    finally:
        flush_log()  # the log ends before a one-line error is printed


@main.group(name="config")
def config_group() -> None:
    """Configuration."""


@config_group.command()
@config_option
@click.pass_context
@one_line_errors
def check(ctx: click.Context) -> None:
    """Validate relay.toml, the policies, and the files they name."""
    config = load_config(ctx)
    load_policies(config.policies.path)
    ServerTls(config.smtp)  # loads the certificate and key, or says why not
    relayhost_credentials(config.delivery)
    trust_store(config.delivery.ca_file)
    click.echo(f"{config.source}: ok (policies in {config.policies.path}: ok)")


@main.group(name="db")
def db_group() -> None:
    """The queue database (postgres backend)."""


@db_group.command(name="status")
@config_option
@click.pass_context
@one_line_errors
def db_status(ctx: click.Context) -> None:
    """Say which schema version the queue database has."""
    config = load_config(ctx)
    if config.queue.backend != "postgres":
        raise RelayError("db status: [queue] backend is local: there is no database")
    dsn = database_dsn(config.queue)
    current, newest = asyncio.run(schema_status(dsn))
    state = ("up to date" if current == newest else
             f"{newest - current} migrations to apply (a starting relay applies them)")
    click.echo(f"{where(dsn)}: schema version {current} of {newest}, {state}")


@main.command(name="hash-password")
@one_line_errors
def hash_password_command() -> None:
    """Read a password on stdin and print its hash for policies/access.toml."""
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise RelayError("no password on standard input")
    click.echo(hash_password(password))


@main.command()
@click.option("--from", "sender", help="From: (and envelope sender), e.g. 'App <a@x.example>'")
@click.option("--to", "to", multiple=True, help="recipient (repeat for more)")
@click.option("--cc", multiple=True)
@click.option("--bcc", multiple=True)
@click.option("--subject", default="")
@click.option("--text", help="plain-text body ('-': standard input)")
@click.option("--html-file", type=click.File("r", encoding="utf-8"))
@click.option("--attach", type=click.Path(exists=True, dir_okay=False), multiple=True)
@click.option("--header", "headers", multiple=True, help="'Name: value' (repeat for more)")
@click.option("--raw", "raw_file", type=click.File("r", encoding="utf-8"),
              help="send this RFC 5322 file as it is (with --mail-from and --to)")
@click.option("--mail-from", help="envelope sender for --raw ('' for <>)")
@click.option("--idempotency-key")
@config_option
@click.pass_context
@one_line_errors
def send(ctx: click.Context, sender: str | None, to: tuple[str, ...], cc: tuple[str, ...],
         bcc: tuple[str, ...], subject: str, text: str | None, html_file: Any,
         attach: tuple[str, ...], headers: tuple[str, ...], raw_file: Any,
         mail_from: str | None, idempotency_key: str | None) -> None:
    """Submit one message through the running relay's API (POST /v1/messages)."""
    if raw_file is not None:
        body: dict[str, Any] = {"mail_from": mail_from or "", "rcpt_to": list(to),
                                "raw": raw_file.read()}
    else:
        if not sender:
            raise RelayError("send: give --from (or --raw FILE)")
        body = {"from": sender, "to": list(to), "cc": list(cc), "bcc": list(bcc),
                "subject": subject, "headers": dict(_header(h) for h in headers),
                "attachments": [_attachment(path) for path in attach]}
        if text is not None:
            body["text"] = sys.stdin.read() if text == "-" else text
        if html_file is not None:
            body["html"] = html_file.read()
    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    answer = admin_client(ctx).request("POST", "/v1/messages", body, headers=extra)
    click.echo(f"queued as {answer['id']} ({answer['recipients']} recipients)")


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise RelayError(f"send: --header {line!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _attachment(path: str) -> dict[str, str]:
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as file:
        content = base64.b64encode(file.read()).decode()
    return {"filename": os.path.basename(path), "content_type": content_type,
            "content": content}


@main.group()
def queue() -> None:
    """Inspect and manage the queue of the running relay."""


@queue.command(name="list")
@click.option("--state", type=click.Choice(
    ["queued", "active", "deferred", "held", "delivered", "bounced"]))
@click.option("--domain")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@config_option
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context, state: str | None, domain: str | None,
                 as_json: bool) -> None:
    """List queued messages, like mailq."""
    query = "&".join(f"{k}={v}" for k, v in (("state", state), ("domain", domain)) if v)
    messages = admin_client(ctx).request("GET", "/v1/queue" + (f"?{query}" if query else ""))
    if as_json:
        for message in messages["messages"]:
            click.echo(json.dumps(message))
        return
    click.echo(format_mailq(messages["messages"]))


@queue.command()
@click.argument("message_id")
@config_option
@click.pass_context
@one_line_errors
def show(ctx: click.Context, message_id: str) -> None:
    """Show one message and its recipients as JSON."""
    click.echo(json.dumps(admin_client(ctx).request("GET", f"/v1/queue/{message_id}"), indent=2))


def _selection_action(name: str, key: str, help_text: str, done: str) -> None:
    """`queue NAME [ID ...] [--domain D] [--all]`: POST /v1/queue/NAME with the selection."""

    @queue.command(name=name, help=help_text)
    @click.argument("message_ids", nargs=-1)
    @click.option("--domain", help="every message with a recipient at this domain")
    @click.option("--all", "everything", is_flag=True, help="every message in the queue")
    @config_option
    @click.pass_context
    @one_line_errors
    def action(ctx: click.Context, message_ids: tuple[str, ...], domain: str | None,
               everything: bool) -> None:
        if not (message_ids or domain or everything):
            raise RelayError(f"queue {name}: give message ids, --domain D or --all")
        body = {"ids": list(message_ids), "domain": domain, "all": everything}
        count = admin_client(ctx).request("POST", f"/v1/queue/{name}", body)[key]
        click.echo(f"{count} recipient{'' if count == 1 else 's'} {done}")


_selection_action("flush", "flushed", "Retry deferred mail now: given messages, one domain, "
                  "or --all.", "scheduled for delivery")
_selection_action("requeue", "requeued", "Put messages back in the queue, due now, whatever "
                  "their recipients' state (active and held too), like postsuper -r.",
                  "requeued")


@queue.command()
@click.option("--state", type=click.Choice(["queued", "active", "deferred", "held"]),
              help="only recipients in this state (default: every waiting one)")
@click.option("--json", "as_json", is_flag=True)
@config_option
@click.pass_context
@one_line_errors
def summary(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Waiting recipients by domain and age in minutes, like Postfix's qshape."""
    result = admin_client(ctx).request("GET", "/v1/queue/summary" + (f"?state={state}" if state
                                                                  else ""))
    click.echo(json.dumps(result) if as_json else format_qshape(result))


def _message_action(name: str, method: str, path: str, key: str, done: str) -> None:
    @queue.command(name=name, help=f"{done.capitalize()} one message.")
    @click.argument("message_id")
    @config_option
    @click.pass_context
    @one_line_errors
    def action(ctx: click.Context, message_id: str) -> None:
        result = admin_client(ctx).request(method, path.format(message_id))
        click.echo(f"{message_id}: {done} ({key}: {result[key]})")


_message_action("hold", "POST", "/v1/queue/{}/hold", "held", "held")
_message_action("release", "POST", "/v1/queue/{}/release", "released", "released")
_message_action("delete", "DELETE", "/v1/queue/{}", "deleted", "deleted")


def format_qshape(summary: dict[str, Any]) -> str:
    """qshape's table: a TOTAL row, then one row per domain, busiest first; the columns are
    recipients younger than 5, 10, 20... minutes, and the last one everything older."""
    limits = summary["age_buckets_minutes"]
    headers = ["T", *map(str, limits), f"{limits[-1]}+"]
    domains = summary["domains"]
    totals = [sum(d["total"] for d in domains)]
    totals += [sum(d["by_age"][i] for d in domains) for i in range(len(limits) + 1)]
    rows = [("TOTAL", totals)] + [(d["domain"], [d["total"], *d["by_age"]]) for d in domains]
    name_width = max(len(name) for name, _ in rows)
    widths = [max(len(h), *(len(str(r[1][i])) for r in rows)) for i, h in enumerate(headers)]

    def line(name: str, cells: list[Any]) -> str:
        return " ".join([name.rjust(name_width), *(str(c).rjust(w)
                                                   for c, w in zip(cells, widths, strict=True))])

    return "\n".join([line("", headers)] + [line(name, cells) for name, cells in rows])


def format_mailq(messages: list[dict[str, Any]]) -> str:
    """The queue as Postfix's mailq prints it: `*` active, `!` held."""
    if not messages:
        return "Mail queue is empty"
    lines = ["-Queue ID-           --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for message in messages:
        states = {r["state"] for r in message["recipients"]}
        mark = "*" if "active" in states else "!" if states == {"held"} else " "
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(message["received_at"]))
        lines.append(f"{message['id']}{mark} {message['size']:>8} {arrival}  "
                     f"{message['from'] or 'MAILER-DAEMON'}")
        for rcpt in message["recipients"]:
            if rcpt["state"] in ("delivered", "bounced"):
                continue
            if rcpt["last_reply"]:
                lines.append(f"{'':51}({rcpt['last_reply']})")
            lines.append(f"{'':51}{rcpt['address']}")
        lines.append("")
        total += message["size"]
    count = len(messages)
    lines.append(f"-- {max(total // 1024, 1)} Kbytes in {count} "
                 f"Request{'s' if count != 1 else ''}.")
    return "\n".join(lines)


main.add_command(broadcast)
main.add_command(suppression)
main.add_command(dkim)
main.add_command(pgp)
main.add_command(mta_sts)
