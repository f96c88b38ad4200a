"""cli.queue: `relayctl queue`, Postfix's mailq, postcat -q, postsuper and qshape over the
running relay's admin API (/v1/queue), on either backend.

Commands that change the queue take message ids, `-` (ids on standard input, one per line
or separated by spaces, as `postsuper -d -` reads them; mailq's `*` and `!` marks are
ignored), `--domain D` or `--all`. They print what changed; an id that is not in the queue
is one line on standard error and makes the exit status 1, for these and for `show` and
`cat` alike.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from relay.cli.history import history_command
from relay.cli.support import admin_client, config_option, date_of, one_line_errors
from relay.core.errors import RelayError

WAITING_STATES = ["queued", "active", "deferred", "held"]
LEFT_THE_QUEUE = ("delivered", "bounced")  # final: listed by `queue history`, not here


def _waiting_state(ctx: click.Context, param: click.Parameter, value: str | None
                   ) -> str | None:
    if value in ("delivered", "bounced"):
        raise click.BadParameter(f"{value} recipients have left the queue; it holds "
                                 f"{', '.join(WAITING_STATES)} ones")
    if value is not None and value not in WAITING_STATES:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(WAITING_STATES)}")
    return value


state_option = click.option(
    "--state", callback=_waiting_state, metavar="[" + "|".join(WAITING_STATES) + "]",
    help="only recipients in this state (delivered and bounced ones have left the queue)")


@click.group()
def queue() -> None:
    """Inspect and manage the queue of the running relay."""


queue.add_command(history_command)  # `queue history`: its module is cli.history


@queue.command(name="list")
@state_option
@click.option("--domain", help="only messages with a recipient at this domain")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one JSON object per message, a line each, with the "
                   "recipients still in the queue (as postqueue -j)")
@config_option
@click.pass_context
@one_line_errors
def list_command(ctx: click.Context, state: str | None, domain: str | None,
                 as_json: bool) -> None:
    """List queued messages, like mailq: each with its recipients still in the queue
    (delivered and bounced ones have left it)."""
    query = "&".join(f"{k}={v}" for k, v in (("state", state), ("domain", domain)) if v)
    answer = admin_client(ctx).request("GET", "/v1/queue" + (f"?{query}" if query else ""))
    messages = still_queued(answer["messages"])
    if as_json:
        for message in messages:
            click.echo(json.dumps(message))
        return
    click.echo(format_mailq(messages))


@queue.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="the message and its recipients as JSON")
@config_option
@click.pass_context
@one_line_errors
def show(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Show one message's envelope and its recipients' states."""
    message = admin_client(ctx).request("GET", f"/v1/queue/{message_id}")
    click.echo(json.dumps(message, indent=2) if as_json else format_message(message))


@queue.command()
@click.argument("message_id")
@click.option("-e", "--envelope", is_flag=True, help="only the envelope")
@click.option("-h", "--header", is_flag=True, help="only the message header")
@click.option("-b", "--body", is_flag=True, help="only the message body")
@config_option
@click.pass_context
@one_line_errors
def cat(ctx: click.Context, message_id: str, envelope: bool, header: bool, body: bool) -> None:
    """Print a queued message: its envelope, then the message as stored (postcat -q)."""
    client = admin_client(ctx)
    message = client.request("GET", f"/v1/queue/{message_id}")
    everything = not (envelope or header or body)
    out = sys.stdout.buffer
    if envelope or everything:
        out.write(format_envelope(message).encode() + b"\n")
    if header or body or everything:
        content = client.read(f"/v1/queue/{message_id}/message")
        head, blank, rest = content.partition(b"\r\n\r\n")
        if everything:
            out.write(f"*** MESSAGE CONTENTS {message_id} ***\n".encode() + content)
        else:
            out.write((head + b"\r\n" if header else b"") + (rest if body and blank else b""))
    if everything:
        out.write(f"\n*** END OF MESSAGE {message_id} ***\n".encode())
    out.flush()


def _operator_command(name: str, key: str, help_text: str, done: str, unchanged: str,
                      counted: str = "recipient") -> None:
    """`queue NAME [ID ... | -] [--domain D] [--all]`: POST /v1/queue/NAME."""

    @queue.command(name=name, help=help_text)
    @click.argument("message_ids", nargs=-1)
    @click.option("--domain", help="every message with a recipient at this domain")
    @click.option("--all", "everything", is_flag=True, help="every message in the queue")
    @config_option
    @click.pass_context
    @one_line_errors
    def command(ctx: click.Context, message_ids: tuple[str, ...], domain: str | None,
                everything: bool) -> None:
        ids = _ids(message_ids)
        if not (ids or domain or everything):
            raise RelayError(f"queue {name}: give message ids, - (ids on standard input), "
                             "--domain D or --all")
        answer = admin_client(ctx).request(
            "POST", f"/v1/queue/{name}", {"ids": ids, "domain": domain, "all": everything})
        count = answer[key]
        click.echo(f"{count} {counted}{'' if count == 1 else 's'} {done}"
                   + ("" if count or answer["missing"] else f" ({unchanged})"))
        for missing in answer["missing"]:  # as `queue show` says it (admin.queue_routes)
            click.echo(f"relayctl: no message {missing} in the queue", err=True)
        if answer["missing"]:
            sys.exit(1)


def _ids(arguments: tuple[str, ...]) -> list[str]:
    """The ids given, `-` read from standard input (mailq's marks stripped)."""
    ids: list[str] = []
    for argument in arguments:
        words = sys.stdin.read().split() if argument == "-" else [argument]
        ids += [word.rstrip("*!") for word in words]
    return list(dict.fromkeys(id_ for id_ in ids if id_))


_operator_command("flush", "flushed", "Retry deferred mail now, like postqueue -f (or -i "
                  "for given messages).", "scheduled for delivery", "none was deferred")
_operator_command("requeue", "requeued", "Put messages back in the queue, due now, whatever "
                  "their recipients' state (active and held too), like postsuper -r.",
                  "requeued", "none was waiting")
_operator_command("hold", "held", "Hold messages: their waiting recipients are not sent "
                  "until released, like postsuper -h.", "held",
                  "none was waiting: held already, or being delivered")
_operator_command("release", "released", "Release held messages, due now, like postsuper -H.",
                  "released", "none was held")
_operator_command("delete", "deleted", "Delete messages and all their recipients, like "
                  "postsuper -d (a broadcast is stopped with `broadcast cancel`).",
                  "deleted", "nothing to delete", counted="message")


@queue.command()
@state_option
@click.option("--by", type=click.Choice(["recipient", "sender"]), default="recipient",
              show_default=True,
              help="recipient: recipients by destination domain; sender: messages by "
                   "sender domain (qshape -s)")
@click.option("--json", "as_json", is_flag=True, help="the counts as JSON")
@config_option
@click.pass_context
@one_line_errors
def summary(ctx: click.Context, state: str | None, by: str, as_json: bool) -> None:
    """Waiting mail by domain and age in minutes, like Postfix's qshape."""
    query = f"?by={by}" + (f"&state={state}" if state else "")
    result = admin_client(ctx).request("GET", "/v1/queue/summary" + query)
    click.echo(json.dumps(result) if as_json else format_qshape(result))


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


def still_queued(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with only their recipients that have not left the queue."""
    return [{**m, "recipients": [r for r in m["recipients"]
                                 if r["state"] not in LEFT_THE_QUEUE]} for m in messages]


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
            reason = rcpt.get("activity") or rcpt["last_reply"]  # an active one: what now
            if reason:
                lines.append(f"{'':51}({reason})")
            lines.append(f"{'':51}{rcpt['address']}")
        lines.append("")
        total += message["size"]
    count = len(messages)
    lines.append(f"-- {max(total // 1024, 1)} Kbytes in {count} "
                 f"Request{'s' if count != 1 else ''}.")
    return "\n".join(lines)


def format_message(message: dict[str, Any]) -> str:
    """`queue show`: the envelope, then a table of recipients with their next attempt."""
    rows = [("RECIPIENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST REPLY")]
    rows += [(r["address"], r["state"], str(r["attempts"]), date_of(r["next_attempt_at"]),
              r.get("activity") or r["last_reply"] or "-") for r in message["recipients"]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                        row[4]]).rstrip() for row in rows]
    return "\n".join([f"Queue ID: {message['id']}",
                      f"Sender:   {message['from'] or 'MAILER-DAEMON (<>)'}",
                      f"Size:     {message['size']} bytes",
                      f"Arrived:  {date_of(message['received_at'])}", "", *table])


def format_envelope(message: dict[str, Any]) -> str:
    """postcat's envelope records."""
    lines = [f"*** ENVELOPE RECORDS {message['id']} ***",
             f"message_size: {message['size']}",
             f"message_arrival_time: {date_of(message['received_at'])}",
             f"sender: {message['from']}"]
    lines += [f"recipient: {r['address']} ({r['state']}, {r['attempts']} attempts"
              + (f", last reply: {r['last_reply']}" if r["last_reply"] else "") + ")"
              for r in message["recipients"]]
    return "\n".join(lines)
