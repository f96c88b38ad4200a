"""cli.history: what happened to mail, from the running relay's history (/v1/messages/{id},
/v1/events): `relayctl queue history ID` (a message's recipients and their timelines,
also after it left the queue) and `relayctl events [--follow]` (every event as it comes,
like `tail -f` of the mail log, but structured)."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import click

from relay.cli.support import admin_client, config_option, date_of, one_line_errors
from relay.queue.events import MAX_PAGE, EventType

FOLLOW_INTERVAL = 1.0  # seconds between polls with --follow


@click.command(name="history")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="the history as the API gives it")
@config_option
@click.pass_context
@one_line_errors
def history_command(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Show a message's envelope and every recipient's timeline, also after it left the
    queue (for [history] retention)."""
    found = admin_client(ctx).request("GET", f"/v1/messages/{urllib.parse.quote(message_id)}")
    click.echo(json.dumps(found, indent=2) if as_json else format_history(found))


def format_history(history: dict[str, Any]) -> str:
    where = "in the queue" if history["in_queue"] else f"left {date_of(history['finished_at'])}"
    lines = [(f"{history['id']}  {history['size']} bytes  from <{history['mail_from']}>  "
              f"received {date_of(history['received_at'])}  {where}")]
    if history["subject"]:
        lines.append(f"  subject: {history['subject']}")
    if history["metadata"] is not None or history["tags"]:
        lines.append(f"  metadata: {json.dumps(history['metadata'])}  "
                     f"tags: {' '.join(history['tags']) or '-'}")
    for recipient in history["recipients"]:
        lines.append(f"  <{recipient['address']}>: {recipient['state']}")
        for event in recipient["events"]:
            lines.append(f"    {date_of(event['at'])}  {event['type']:<12} {_detail(event)}")
    return "\n".join(lines)


@click.command()
@click.option("--message", "message_id", help="only this message's events")
@click.option("--recipient", help="only events of this recipient address")
@click.option("--type", "types", multiple=True, type=click.Choice([t.value for t in EventType]),
              help="only events of this type (repeat for several)")
@click.option("--since", type=float, help="only events at or after this Unix time")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events as they come")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event")
@config_option
@click.pass_context
@one_line_errors
def events(ctx: click.Context, message_id: str | None, recipient: str | None,
           types: tuple[str, ...], since: float | None, follow: bool, as_json: bool) -> None:
    """Print delivery events (accepted, deferred, delivered, bounced, ...) oldest first."""
    client = admin_client(ctx)
    query: list[tuple[str, str]] = [("limit", str(MAX_PAGE))]
    query += [(k, v) for k, v in (("message", message_id), ("recipient", recipient)) if v]
    query += [("type", t) for t in types]
    if since is not None:
        query.append(("since", str(since)))
    cursor = ""
    try:
        while True:
            page = client.request("GET", "/v1/events?" + urllib.parse.urlencode(
                [*query, ("after", cursor)]))
            for event in page["events"]:
                click.echo(json.dumps(event) if as_json else format_event(event))
            cursor = page["next"]
            if len(page["events"]) < MAX_PAGE:
                if not follow:
                    return
                time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return


def format_event(event: dict[str, Any]) -> str:
    return (f"{date_of(event['at'])}  {event['message_id']}  {event['type']:<12} "
            f"<{event['recipient']}>  {_detail(event)}").rstrip()


def _detail(event: dict[str, Any]) -> str:
    data = event["data"]
    parts = [data[key] for key in ("relay", "tls") if data.get(key)]
    if "reply" in data:
        parts.append(f"({data['reply']})")
    if data.get("next_attempt_at"):
        parts.append(f"next attempt {date_of(data['next_attempt_at'])}")
    if data.get("dsn"):
        parts.append("DSN sent")
    if data.get("late"):
        parts.append(f"after delivery ({data.get('source', 'dsn')})")
    if data.get("feedback_type"):
        parts.append(f"feedback type {data['feedback_type']}")
    if data.get("method"):
        parts.append(f"by {data['method']} in {data.get('stream', 'its stream')}")
    return " ".join(parts)
