"""cli.broadcast: `relayctl broadcast submit|list|status|cancel` and `relayctl suppression`,
clients of the admin API's /v1/broadcasts and /v1/suppressions."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import click

from relay.cli.support import admin_client, config_option, date_of, one_line_errors
from relay.core.errors import RelayError


@click.group()
def broadcast() -> None:
    """Broadcasts: one template, many recipients (POST /v1/broadcasts)."""


@broadcast.command(name="submit")
@click.argument("recipients", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", "template_file", type=click.File("r", encoding="utf-8"),
              help="the template (JSON) for a CSV file; an NDJSON file starts with it")
@click.option("--idempotency-key",
              help="the same key and file within 24 hours make one broadcast")
@config_option
@click.pass_context
@one_line_errors
def broadcast_submit(ctx: click.Context, recipients: str, template_file: Any,
                     idempotency_key: str | None) -> None:
    """Upload FILE.ndjson (template line, then one recipient per line) or FILE.csv (an
    `email` column, the others are fields; with --template), with a progress bar."""
    is_csv = recipients.lower().endswith(".csv")
    if is_csv and template_file is None:
        raise RelayError("broadcast submit: a CSV file needs --template TEMPLATE.json")
    if not is_csv and template_file is not None:
        raise RelayError("broadcast submit: --template is for CSV files; an NDJSON file "
                         "starts with its template")
    size = os.path.getsize(recipients)
    # What the client can find wrong is found before the upload starts.
    template = _template_line(template_file.read()) if is_csv else b""
    columns = _csv_columns(recipients) if is_csv else []
    if is_csv and "email" not in columns:
        raise RelayError(f"broadcast submit: {recipients} has no 'email' column (it has: "
                         f"{', '.join(columns) or 'none'})")
    with click.progressbar(length=size, label="uploading", file=sys.stderr) as progress:
        chunks = (_csv_as_ndjson(recipients, template, progress) if is_csv
                  else _file_chunks(recipients, progress))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = admin_client(ctx).upload("/v1/broadcasts", chunks, "application/x-ndjson",
                                     headers)
    click.echo(f"broadcast {answer['id']}: {answer['accepted']} accepted, "
               f"{answer['suppressed']} suppressed, {answer['rejected_total']} rejected")
    for rejection in answer["rejected"]:
        click.echo(f"  rejected #{rejection['index']} {rejection['email'] or '-'}: "
                   f"{rejection['reason']}")


def _file_chunks(path: str, progress: Any) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(256 * 1024):
            progress.update(len(chunk))
            yield chunk


def _template_line(template: str) -> bytes:
    try:
        parsed = json.loads(template)
    except ValueError as exc:
        raise RelayError(f"broadcast submit: --template is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise RelayError("broadcast submit: --template is not a JSON object")
    return json.dumps(parsed).encode() + b"\n"


def _csv_columns(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            return next(csv.reader(file), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RelayError(f"broadcast submit: {path}: not a UTF-8 CSV file: {exc}") from None


def _csv_as_ndjson(path: str, template: bytes, progress: Any) -> Iterator[bytes]:
    yield template
    with open(path, "rb") as file:
        def counted_lines() -> Iterator[str]:
            for line in file:
                progress.update(len(line))
                yield line.decode("utf-8-sig" if progress.pos == len(line) else "utf-8")

        rows = csv.DictReader(counted_lines())
        batch: list[str] = []
        for row in rows:
            address = row.pop("email")
            batch.append(json.dumps({"email": address, "fields": row}, ensure_ascii=False))
            if len(batch) == 1000:
                yield ("\n".join(batch) + "\n").encode()
                batch = []
        if batch:
            yield ("\n".join(batch) + "\n").encode()


@broadcast.command(name="list")
@click.option("--state", type=click.Choice(["receiving", "sending", "done", "cancelled"]),
              help="only the broadcasts in this state")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="how many, newest first")
@config_option
@click.pass_context
@one_line_errors
def broadcast_list(ctx: click.Context, state: str | None, limit: int) -> None:
    """The newest broadcasts, a line each: id, state, counts, when it was created."""
    client = admin_client(ctx)
    cursor: str | None = None
    shown = 0
    while shown < limit:
        query = {"limit": min(limit - shown, 1000), "state": state, "cursor": cursor}
        page = client.request("GET", "/v1/broadcasts?" + urllib.parse.urlencode(
            {k: v for k, v in query.items() if v is not None}))
        for counts in page["broadcasts"]:
            click.echo(f"{format_broadcast(counts)} (created {date_of(counts['created_at'])})")
        shown += len(page["broadcasts"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if shown == 0:
        click.echo("No broadcasts" + (f" {state}" if state else ""))


@broadcast.command(name="status")
@click.argument("broadcast_id")
@click.option("--follow", is_flag=True,
              help="print the counts as they change, until --until is reached")
@click.option("--until", type=click.Choice(["attempted", "final"]), default="attempted",
              show_default=True,
              help="with --follow, attempted: until every recipient was tried once (only "
                   "deferred ones may be left, retried for up to [retry] max_age); final: "
                   "until every recipient is delivered, bounced or cancelled")
@config_option
@click.pass_context
@one_line_errors
def broadcast_status(ctx: click.Context, broadcast_id: str, follow: bool, until: str) -> None:
    """A broadcast's counts: total, queued, deferred, delivered, bounced..."""
    client = admin_client(ctx)
    if not follow:
        click.echo(format_broadcast(client.request("GET", f"/v1/broadcasts/{broadcast_id}")))
        return
    last = ""
    for counts in client.events(f"/v1/broadcasts/{broadcast_id}/events"):
        line = format_broadcast(counts)
        if line != last:  # the stream ends with the final counts, printed like any change
            click.echo(line)
            last = line
        if until == "attempted" and counts["queued"] == 0 and counts["deferred"]:
            click.echo(f"{counts['deferred']} deferred, retried with backoff; the next "
                       f"attempt at {date_of(counts['next_attempt_at'])} (--until final "
                       "follows them)")
            return


@broadcast.command(name="cancel")
@click.argument("broadcast_id")
@config_option
@click.pass_context
@one_line_errors
def broadcast_cancel(ctx: click.Context, broadcast_id: str) -> None:
    """Stop sending what has not been sent (a finished broadcast is an error)."""
    counts = admin_client(ctx).request("POST", f"/v1/broadcasts/{broadcast_id}/cancel")
    click.echo(format_broadcast(counts))


def format_broadcast(counts: dict[str, Any]) -> str:
    return (f"{counts['id']} {counts['state']}: {counts['total']} total, "
            f"{counts['queued']} queued, {counts['deferred']} deferred, "
            f"{counts['delivered']} delivered, {counts['bounced']} bounced, "
            f"{counts['cancelled']} cancelled, {counts['suppressed']} suppressed, "
            f"{counts['rejected']} rejected")


_STREAM = click.option("--stream", default=None, metavar="NAME",
                       help='one stream (transactional, broadcast, a named one; "*": the '
                            'entries that hold in every stream)')


@click.group()
def suppression() -> None:
    """Addresses not sent to, by stream: hard bounces in every stream ("*"), complaints
    and unsubscribes in the stream they came from."""


@suppression.command(name="list")
@_STREAM
@config_option
@click.pass_context
@one_line_errors
def suppression_list(ctx: click.Context, stream: str | None) -> None:
    """Print the suppressed addresses: address, stream, since when, why."""
    query = f"?stream={urllib.parse.quote(stream)}" if stream else ""
    entries = admin_client(ctx).request("GET", f"/v1/suppressions{query}")["suppressions"]
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created_at"]))
        click.echo(f"{entry['address']}\t{entry['stream']}\t{stamp}\t{entry['reason']}")


@suppression.command(name="add")
@click.argument("address")
@click.option("--reason", default="added by an operator", show_default=True,
              help="why, as the list will show it")
@click.option("--stream", default="*", show_default=True, metavar="NAME",
              help='the stream it holds in ("*": every stream)')
@config_option
@click.pass_context
@one_line_errors
def suppression_add(ctx: click.Context, address: str, reason: str, stream: str) -> None:
    """Add ADDRESS: mail of the stream skips it from now on."""
    added = admin_client(ctx).request("POST", "/v1/suppressions", {
        "address": address, "reason": reason, "stream": stream})["added"]
    click.echo(f"{address}: {'suppressed' if added else 'was already suppressed'} "
               f"in {'every stream' if stream == '*' else stream}")


@suppression.command(name="remove")
@click.argument("address")
@_STREAM
@config_option
@click.pass_context
@one_line_errors
def suppression_remove(ctx: click.Context, address: str, stream: str | None) -> None:
    """Remove ADDRESS from every stream's list (or from one's with --stream)."""
    query = f"?stream={urllib.parse.quote(stream)}" if stream else ""
    admin_client(ctx).request("DELETE",
                              f"/v1/suppressions/{urllib.parse.quote(address)}{query}")
    click.echo(f"{address}: no longer suppressed{f' in {stream}' if stream else ''}")
