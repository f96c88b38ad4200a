"""cli: `relayctl`, the operator's command (serve, queue, config, hash-password).

Queue commands mirror Postfix's postqueue/postsuper and talk only to the running relay's
admin API. Every failure is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import functools
import json
import mimetypes
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from relay import config as config_module
from relay.admin_client import AdminClient
from relay.config import Config
from relay.delivery.client import relayhost_credentials
from relay.errors import RelayError
from relay.logsetup import configure_logging, event_loop_runner
from relay.passwords import hash_password
from relay.policy import load_policies
from relay.smtpd import ServerTls

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RelayError as exc:
            click.echo(f"relayctl: {exc}", err=True)
            sys.exit(2)

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


def _config(ctx: click.Context) -> Config:
    root = ctx.find_root()
    return config_module.load((root.obj or {}).get("config_path"))


def _client(ctx: click.Context) -> AdminClient:
    return AdminClient.from_config(_config(ctx))


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

    config = _config(ctx)
    configure_logging(config)
    try:
        event_loop_runner()(run(config))
    except OSError as exc:
        raise RelayError(f"cannot start: {exc}") from exc


@main.group(name="config")
def config_group() -> None:
    """Configuration."""


@config_group.command()
@config_option
@click.pass_context
@one_line_errors
def check(ctx: click.Context) -> None:
    """Validate relay.toml, the policies, and the files they name."""
    config = _config(ctx)
    load_policies(config.policies.path)
    ServerTls(config.smtp)  # loads the certificate and key, or says why not
    relayhost_credentials(config.delivery)
    click.echo(f"{config.source}: ok (policies in {config.policies.path}: ok)")


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
    answer = _client(ctx).request("POST", "/v1/messages", body, headers=extra)
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
    messages = _client(ctx).request("GET", "/v1/queue" + (f"?{query}" if query else ""))
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
    click.echo(json.dumps(_client(ctx).request("GET", f"/v1/queue/{message_id}"), indent=2))


@queue.command()
@click.argument("message_ids", nargs=-1)
@click.option("--domain")
@click.option("--all", "everything", is_flag=True)
@config_option
@click.pass_context
@one_line_errors
def flush(ctx: click.Context, message_ids: tuple[str, ...], domain: str | None,
          everything: bool) -> None:
    """Retry deferred mail now: given messages, one domain, or --all."""
    if not (message_ids or domain or everything):
        raise RelayError("queue flush: give message ids, --domain D or --all")
    body = {"ids": list(message_ids), "domain": domain, "all": everything}
    result = _client(ctx).request("POST", "/v1/queue/flush", body)
    click.echo(f"{result['flushed']} recipients scheduled for delivery")


@queue.command()
@click.option("--state", type=click.Choice(["queued", "active", "deferred", "held"]),
              help="only recipients in this state (default: every waiting one)")
@click.option("--json", "as_json", is_flag=True)
@config_option
@click.pass_context
@one_line_errors
def summary(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """Waiting recipients by domain and age in minutes, like Postfix's qshape."""
    result = _client(ctx).request("GET", "/v1/queue/summary" + (f"?state={state}" if state
                                                                  else ""))
    click.echo(json.dumps(result) if as_json else format_qshape(result))


@main.group()
def broadcast() -> None:
    """Broadcasts: one template, many recipients (POST /v1/broadcasts)."""


@broadcast.command(name="submit")
@click.argument("recipients", type=click.Path(exists=True, dir_okay=False))
@click.option("--template", "template_file", type=click.File("r", encoding="utf-8"),
              help="the template (JSON) for a CSV file; an NDJSON file starts with it")
@click.option("--idempotency-key")
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
    with click.progressbar(length=size, label="uploading", file=sys.stderr) as progress:
        chunks = (_csv_as_ndjson(recipients, template_file.read(), progress) if is_csv
                  else _file_chunks(recipients, progress))
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        answer = _client(ctx).upload("/v1/broadcasts", chunks, "application/x-ndjson",
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


def _csv_as_ndjson(path: str, template: str, progress: Any) -> Iterator[bytes]:
    try:
        first = json.dumps(json.loads(template))
    except ValueError:
        raise RelayError("broadcast submit: --template is not JSON") from None
    yield first.encode() + b"\n"
    with open(path, "rb") as file:
        def counted_lines() -> Iterator[str]:
            for line in file:
                progress.update(len(line))
                yield line.decode("utf-8-sig" if progress.pos == len(line) else "utf-8")

        rows = csv.DictReader(counted_lines())
        if "email" not in (rows.fieldnames or []):
            raise RelayError(f"broadcast submit: {path} has no 'email' column")
        batch: list[str] = []
        for row in rows:
            address = row.pop("email")
            batch.append(json.dumps({"email": address, "fields": row}, ensure_ascii=False))
            if len(batch) == 1000:
                yield ("\n".join(batch) + "\n").encode()
                batch = []
        if batch:
            yield ("\n".join(batch) + "\n").encode()


@broadcast.command(name="status")
@click.argument("broadcast_id")
@click.option("--follow", is_flag=True, help="print the counts as they change, until done")
@config_option
@click.pass_context
@one_line_errors
def broadcast_status(ctx: click.Context, broadcast_id: str, follow: bool) -> None:
    """A broadcast's counts: total, queued, deferred, delivered, bounced..."""
    client = _client(ctx)
    if not follow:
        click.echo(format_broadcast(client.request("GET", f"/v1/broadcasts/{broadcast_id}")))
        return
    for counts in client.events(f"/v1/broadcasts/{broadcast_id}/events"):
        click.echo(format_broadcast(counts))


@broadcast.command(name="cancel")
@click.argument("broadcast_id")
@config_option
@click.pass_context
@one_line_errors
def broadcast_cancel(ctx: click.Context, broadcast_id: str) -> None:
    """Stop sending what has not been sent."""
    counts = _client(ctx).request("POST", f"/v1/broadcasts/{broadcast_id}/cancel")
    click.echo(format_broadcast(counts))


def format_broadcast(counts: dict[str, Any]) -> str:
    return (f"{counts['id']} {counts['state']}: {counts['total']} total, "
            f"{counts['queued']} queued, {counts['deferred']} deferred, "
            f"{counts['delivered']} delivered, {counts['bounced']} bounced, "
            f"{counts['cancelled']} cancelled, {counts['suppressed']} suppressed, "
            f"{counts['rejected']} rejected")


@main.group()
def dkim() -> None:
    """DKIM signing keys (policies/dkim.toml)."""


@dkim.command(name="keygen")
@click.argument("domain")
@click.argument("selector")
@click.option("--algorithm", type=click.Choice(["rsa-sha256", "ed25519-sha256"]),
              default="rsa-sha256", show_default=True)
@click.option("--bits", type=click.IntRange(1024, 4096), default=2048, show_default=True)
@click.option("--directory", type=click.Path(file_okay=False),
              help="where the key file goes (default: <policies>/dkim)")
@config_option
@click.pass_context
@one_line_errors
def dkim_keygen(ctx: click.Context, domain: str, selector: str, algorithm: str, bits: int,
                directory: str | None) -> None:
    """Write a new private key (mode 0600) and print its DNS TXT record."""
    from relay.delivery import dkim as dkim_keys

    target_dir = Path(directory) if directory else _config(ctx).policies.path / "dkim"
    target_dir.mkdir(parents=True, exist_ok=True)
    suffix = "key" if algorithm == "ed25519-sha256" else "pem"
    target = target_dir / f"{domain}.{selector}.{suffix}"
    private = dkim_keys.generate_key(algorithm, bits)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RelayError(f"dkim keygen: {target} exists; choose another selector") from None
    with os.fdopen(fd, "wb") as file:
        file.write(private)
    click.echo(f"wrote {target}")
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

    config = _config(ctx)
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


@main.group()
def pgp() -> None:
    """Recipients' PGP keys (the keyring of policies/pgp.toml)."""


def _keyring(ctx: click.Context) -> Path:
    home = load_policies(_config(ctx).policies.path).pgp.keyring
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


@main.group()
def suppression() -> None:
    """Addresses broadcasts skip (hard bounces are added by themselves)."""


@suppression.command(name="list")
@config_option
@click.pass_context
@one_line_errors
def suppression_list(ctx: click.Context) -> None:
    entries = _client(ctx).request("GET", "/v1/suppressions")["suppressions"]
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created_at"]))
        click.echo(f"{entry['address']}\t{stamp}\t{entry['reason']}")


@suppression.command(name="add")
@click.argument("address")
@click.option("--reason", default="added by an operator")
@config_option
@click.pass_context
@one_line_errors
def suppression_add(ctx: click.Context, address: str, reason: str) -> None:
    added = _client(ctx).request("POST", "/v1/suppressions",
                                 {"address": address, "reason": reason})["added"]
    click.echo(f"{address}: {'suppressed' if added else 'was already suppressed'}")


@suppression.command(name="remove")
@click.argument("address")
@config_option
@click.pass_context
@one_line_errors
def suppression_remove(ctx: click.Context, address: str) -> None:
    _client(ctx).request("DELETE", f"/v1/suppressions/{urllib.parse.quote(address)}")
    click.echo(f"{address}: no longer suppressed")


def _message_action(name: str, method: str, path: str, key: str, done: str) -> None:
    @queue.command(name=name, help=f"{done.capitalize()} one message.")
    @click.argument("message_id")
    @config_option
    @click.pass_context
    @one_line_errors
    def action(ctx: click.Context, message_id: str) -> None:
        result = _client(ctx).request(method, path.format(message_id))
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
