"""cli.send: `relayctl send`, one message through the running relay's API
(POST /v1/messages): structured from options, or a raw RFC 5322 file."""

from __future__ import annotations

import base64
import mimetypes
import os
import sys
from typing import Any

import click

from relay.cli.support import admin_client, config_option, one_line_errors
from relay.core.errors import RelayError


@click.command()
@click.option("--from", "sender", help="From: (and envelope sender), e.g. 'App <a@x.example>'")
@click.option("--to", "to", multiple=True, help="recipient (repeat for more)")
@click.option("--cc", multiple=True, help="Cc: recipient (repeat for more)")
@click.option("--bcc", multiple=True,
              help="blind-copy recipient, in the envelope only (repeat for more)")
@click.option("--subject", default="", help="Subject:")
@click.option("--text", help="plain-text body ('-': standard input)")
@click.option("--html-file", type=click.File("r", encoding="utf-8"),
              help="HTML body from this file (with --text: both, as multipart/alternative)")
@click.option("--attach", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="attach this file, its type guessed from its name (repeat for more)")
@click.option("--header", "headers", multiple=True, help="'Name: value' (repeat for more)")
@click.option("--raw", "raw_file", type=click.File("r", encoding="utf-8"),
              help="send this RFC 5322 file as it is (with --mail-from and --to)")
@click.option("--mail-from", help="envelope sender for --raw ('' for <>)")
@click.option("--idempotency-key",
              help="the same key and message within 24 hours are queued once")
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
    count = answer["recipients"]
    click.echo(f"queued as {answer['id']} ({count} recipient{'' if count == 1 else 's'})")


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
