"""dsn: delivery status notifications (RFC 3464) for recipients that failed for good.

The DSN is a `multipart/report; report-type=delivery-status` (RFC 6522) with a human
readable part, a `message/delivery-status` part (per-message fields, then per-recipient
Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date) and the
original headers as `text/rfc822-headers`. It is sent from the null sender `<>` to the
envelope sender. Mail from the null sender is never bounced (no bounce loops).
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from relay.cleanup.cleanup import inspect_message

MAILER_DAEMON = "MAILER-DAEMON"


@dataclass(frozen=True)
class FailedRecipient:
    address: str
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the reply, e.g. "550 5.1.1 No such user"
    remote_mta: str = ""  # host name of the server that gave it, if any


def should_bounce(mail_from: str) -> bool:
    return mail_from != ""


def build_dsn(hostname: str, queue_id: str, sender: str, received_at: float,
              failed: Sequence[FailedRecipient], original: bytes, now: float,
              boundary: str | None = None) -> bytes:
    """The complete DSN message (headers and body, CRLF line endings)."""
    boundary = boundary or f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    headers = [
        f"From: Mail Delivery System <{MAILER_DAEMON}@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]
    parts = [
        _part("text/plain; charset=us-ascii", _human_text(hostname, failed)),
        _part("message/delivery-status", _status_fields(hostname, queue_id, received_at,
                                                        failed, now)),
        _part("text/rfc822-headers", original[:inspect_message(original).header_end], raw=True),
    ]
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    body += f"--{boundary}--\r\n".encode()
    head = "\r\n".join(headers).encode("utf-8") + b"\r\n\r\n"
    preamble = b"This is a MIME-encapsulated message.\r\n\r\n"
    return head + preamble + body


def _part(content_type: str, content: str | bytes, raw: bool = False) -> bytes:
    header = f"Content-Type: {content_type}\r\n"
    if raw:
        header += "Content-Transfer-Encoding: 8bit\r\n"
    data = content if isinstance(content, bytes) else content.encode("utf-8")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return header.encode() + b"\r\n" + data


def _human_text(hostname: str, failed: Sequence[FailedRecipient]) -> str:
    lines = [
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. Its headers are attached below.",
        "",
    ]
    for rcpt in failed:
        lines.append(f"<{rcpt.address}>: {_ascii(rcpt.diagnostic)}")
    return "\r\n".join(lines) + "\r\n"


def _status_fields(hostname: str, queue_id: str, received_at: float,
                   failed: Sequence[FailedRecipient], now: float) -> str:
    blocks = ["\r\n".join([
        f"Reporting-MTA: dns; {hostname}",
        f"X-Relay-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(received_at, localtime=True)}",
    ])]
    for rcpt in failed:
        fields = [
            # RFC 6533: an internationalized address is of type utf-8, not rfc822.
            f"Final-Recipient: {_address_type(rcpt.address)}; {rcpt.address}",
            "Action: failed",
            f"Status: {rcpt.status}",
        ]
        if rcpt.remote_mta:
            fields.append(f"Remote-MTA: dns; {rcpt.remote_mta}")
        fields += [
            f"Diagnostic-Code: smtp; {_ascii(rcpt.diagnostic)}",
            f"Last-Attempt-Date: {email.utils.formatdate(now, localtime=True)}",
        ]
        blocks.append("\r\n".join(fields))
    return "\r\n\r\n".join(blocks) + "\r\n"


def _address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def _ascii(text: str) -> str:
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())
