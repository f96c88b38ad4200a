"""feedback.reports: what a message that came back to the bounce domain says.

- A delivery status notification (RFC 3464, `multipart/report;
  report-type=delivery-status`): each recipient block whose Action is `failed`, with its
  Status, Diagnostic-Code and Remote-MTA.
- A feedback report (ARF, RFC 5965, `report-type=feedback-report`): its Feedback-Type and
  User-Agent, and the headers of the message complained about, in which the relay's own
  tokens are looked for (its return path, its List-Unsubscribe).
- Anything else: the many bounces that are not well-formed DSNs, read by flufl.bounce's
  detectors (Exim, qmail, Exchange, Yahoo, ...), which tell permanent from temporary.
"""

from __future__ import annotations

import email
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Literal

from flufl.bounce import all_failures

log = logging.getLogger("relay.feedback")

# Feedback types that are a complaint about the mail (not "not-spam", "auth-failure").
COMPLAINTS = {"abuse", "fraud", "virus", "other"}
_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")


@dataclass(frozen=True)
class Failure:
    """One recipient's failure in a bounce."""

    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the remote server's reply, or what the detector saw
    remote_mta: str = ""
    recipient: str = ""  # Final-Recipient as the bounce names it

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")


@dataclass(frozen=True)
class Report:
    kind: Literal["bounce", "complaint", "none"]
    source: str  # "dsn", "detector" or "arf"
    failures: list[Failure] = field(default_factory=list)
    feedback_type: str = ""
    user_agent: str = ""
    original: bytes = b""  # the returned message's headers (and body, if sent back)


def read_report(data: bytes) -> Report:
    message = email.message_from_bytes(data)
    content_type = message.get_content_type()
    report_type = str(message.get_param("report-type", "", header="content-type")).lower()
    if content_type == "multipart/report" and report_type == "feedback-report":
        return _feedback_report(message)
    if content_type == "multipart/report" and report_type == "delivery-status":
        blocks = _status_blocks(message)
        failures = _dsn_failures(blocks)
        if failures:
            return Report("bounce", "dsn", failures, original=_original(message))
        if blocks:  # a DSN of delays or successes: nothing failed
            return Report("none", "dsn")
    return _detected(message)


def _feedback_report(message: Message) -> Report:
    fields: Message | None = None
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            fields = _fields_of(part)
    if fields is None:
        return Report("none", "arf")
    kind = str(fields.get("Feedback-Type", "")).strip().lower()
    return Report("complaint" if kind in COMPLAINTS else "none", "arf", feedback_type=kind,
                  user_agent=str(fields.get("User-Agent", "")).strip(),
                  original=_original(message))


def _fields_of(part: Message) -> Message:
    """A report part's fields: parsed by the email package (message/* subparts) or, for
    a part it leaves as text, parsed here."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = part.get_payload(decode=True) or b""
    return email.message_from_bytes(bytes(text).lstrip(b"\r\n"))


def _status_blocks(message: Message) -> list[Message]:
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status",
                                       "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                return [block for block in payload if isinstance(block, Message)]
            text = bytes(part.get_payload(decode=True) or b"").replace(b"\r\n", b"\n")
            return [email.message_from_bytes(block) for block in re.split(b"\n\n+", text)
                    if block.strip()]
    return []


def _dsn_failures(blocks: list[Message]) -> list[Failure]:
    """The recipient blocks whose Action is `failed` (the per-message block has none)."""
    remote = ""
    failures = []
    for block in blocks:
        if str(block.get("Action", "")).strip().lower() != "failed":
            continue
        remote = _typed_value(block.get("Remote-MTA", "")) or remote
        failures.append(Failure(
            status=str(block.get("Status", "5.0.0")).strip().split()[0] or "5.0.0",
            diagnostic=" ".join(_typed_value(block.get("Diagnostic-Code", "")).split()),
            remote_mta=remote, recipient=_typed_value(block.get("Final-Recipient", ""))))
    return failures


def _typed_value(value: object) -> str:
    """`rfc822; ann@example.test` -> `ann@example.test`; `smtp; 550 ...` -> `550 ...`."""
    text = " ".join(str(value).split())
    return text.partition(";")[2].strip() if ";" in text else text


def _original(message: Message) -> bytes:
    """The returned message (or its headers) that a report carries, as bytes."""
    for part in message.walk():
        if part.get_content_type() not in _ORIGINAL_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0].as_bytes()
        return bytes(part.get_payload(decode=True) or b"")
    return b""


def _detected(message: Message) -> Report:
    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # a detector tripping over odd input: no answer, not a crash
        log.info("bounce detectors could not read a message: %r", exc)
        return Report("none", "detector")
    if not (temporary or permanent):
        return Report("none", "detector")
    status = "5.0.0" if permanent else "4.0.0"
    recipients = sorted(permanent or temporary)
    failures = [Failure(status, f"{'permanent' if permanent else 'temporary'} failure "
                                "reported in a non-standard bounce",
                        recipient=r.decode("utf-8", "replace")) for r in recipients]
    return Report("bounce", "detector", failures, original=message.as_bytes())
