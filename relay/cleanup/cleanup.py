"""cleanup: the one path every new message takes into the queue, from SMTP or HTTP.

It rejects input that cannot be a message (NUL bytes, lines over 998 octets, RFC 5322
section 2.1.1) with 5.6.0, and is otherwise as lenient as Postfix. It prepends a
`Received:` trace header (RFC 5321 section 4.4, protocol names from RFC 3848) and adds
`Message-ID:` and `Date:` at the end of the header section when missing, and removes
`X-Relay-Metadata:` (the application's metadata for the message's history and events, a
JSON object) and `X-Relay-Stream:` (the stream it belongs to, for the suppression list).
The rest of the message stays byte-exact: 8-bit and SMTPUTF8 content is never re-encoded.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.core.errors import Rejected
from relay.core.reply import malformed
from relay.queue import (
    MAX_METADATA,
    Idempotency,
    MessageStore,
    NewMessage,
    Tracking,
    new_queue_id,
)
from relay.queue.base import NO_TRACKING, STREAM_PATTERN, TRANSACTIONAL

MAX_LINE = 998
METADATA_HEADER_NAME = "X-Relay-Metadata"  # the application's metadata, removed here
METADATA_HEADER = METADATA_HEADER_NAME.lower()
STREAM_HEADER_NAME = "X-Relay-Stream"  # the message's stream (SMTP), removed here
STREAM_HEADER = STREAM_HEADER_NAME.lower()
_RELAY_HEADERS = (METADATA_HEADER, STREAM_HEADER)  # for the relay alone: never sent on
_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")


@dataclass(frozen=True)
class Origin:
    """Where a message came from, for the Received header and the logs."""

    protocol: str  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848) or HTTP
    client_address: str
    helo: str = ""
    tls: str = ""  # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"
    user: str = ""


@dataclass(frozen=True)
class Inspected:
    header_end: int  # offset of the end of the header section
    header_names: frozenset[str]  # lower-cased
    from_values: tuple[str, ...]  # the From: fields, unfolded
    subject: str = ""  # the first Subject: field, unfolded, RFC 2047 words as they are
    # X-Relay-Metadata and X-Relay-Stream fields: (start, end) offsets of each, and
    # their values unfolded
    relay_fields: tuple[tuple[int, int], ...] = ()
    metadata_values: tuple[str, ...] = ()
    stream_values: tuple[str, ...] = ()

    @property
    def from_addresses(self) -> tuple[str, ...]:
        """Parsed on demand: only authenticated users' messages need them."""
        pairs = email.utils.getaddresses(list(self.from_values))
        return tuple(address for _, address in pairs if address)


def inspect_message(data: bytes) -> Inspected:
    """Check that `data` can be a message and find what cleanup needs; raise Rejected."""
    if b"\0" in data:
        raise Rejected(malformed("message contains NUL bytes"))
    if _has_long_line(data):
        raise Rejected(malformed(f"line longer than {MAX_LINE} characters"))
    names: set[str] = set()
    kept: dict[str, list[str]] = {"from": [], "subject": [], METADATA_HEADER: [],
                                  STREAM_HEADER: []}
    spans: list[list[int]] = []  # of the relay's own fields
    offset = 0
    current: str | None = None
    while offset < len(data):
        newline = data.find(b"\n", offset)
        end = len(data) if newline < 0 else newline + 1
        line = data[offset:end]
        if line[:1] in (b" ", b"\t") and current is not None:
            if current in kept:
                kept[current][-1] += line.decode("utf-8", "replace")
                if current in _RELAY_HEADERS:
                    spans[-1][1] = end
        elif (match := _FIELD_NAME.match(line)) is not None:
            current = match.group(0)[:-1].strip().decode("ascii").lower()
            names.add(current)
            if current in kept:
                kept[current].append(line[match.end():].decode("utf-8", "replace"))
                if current in _RELAY_HEADERS:
                    spans.append([offset, end])
        else:
            break  # the blank separator line, or a body without one: headers end here
        offset = end
    subjects = kept["subject"]
    return Inspected(offset, frozenset(names), tuple(kept["from"]),
                     _unfolded(subjects[0]) if subjects else "",
                     tuple((start, stop) for start, stop in spans),
                     tuple(map(_unfolded, kept[METADATA_HEADER])),
                     tuple(map(_unfolded, kept[STREAM_HEADER])))


def _unfolded(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def application_tracking(inspected: Inspected, given: Tracking) -> Tracking:
    """The history's subject and metadata: the API's `given` metadata over that of the
    message's X-Relay-Metadata fields (a JSON object each). Raises Rejected (5.6.0) for
    a field that is not a small JSON object."""
    metadata: dict[str, Any] = {}
    for value in inspected.metadata_values:
        try:
            found = json.loads(value)
        except ValueError:
            found = None
        if not isinstance(found, dict) or len(value) > MAX_METADATA:
            raise Rejected(malformed(f"{METADATA_HEADER_NAME} must be a JSON object of at "
                                     f"most {MAX_METADATA} characters"))
        metadata.update(found)
    if given.metadata is not None:
        metadata.update(given.metadata)
    stream = given.stream
    if inspected.stream_values and stream == TRANSACTIONAL:  # the API's own choice wins
        stream = inspected.stream_values[-1].lower()
        if not re.fullmatch(STREAM_PATTERN, stream):
            raise Rejected(malformed(f"{STREAM_HEADER_NAME} must be a stream name (lower "
                                     "case letters, digits, '.', '_', '-')"))
    return replace(given, subject=inspected.subject, metadata=metadata or None,
                   stream=stream)


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    return email.utils.formatdate(second, localtime=True)


def rfc5322_date(now: float) -> str:
    """The local date and time (RFC 5322 section 3.3), formatted once per second."""
    return _date_of_second(int(now))


def _has_long_line(data: bytes) -> bool:
    """A line over 998 octets, not counting CRLF (split() runs in C: a regex scanning
    every position costs ~300x more)."""
    lines = data.split(b"\n")
    if max(map(len, lines), default=0) <= MAX_LINE:
        return False
    return any(len(line) - line.endswith(b"\r") > MAX_LINE for line in lines)


def received_header(hostname: str, origin: Origin, queue_id: str,
                    recipients: Sequence[str], now: float) -> bytes:
    client = f"{origin.helo or origin.client_address} ([{origin.client_address}])"
    lines = [f"Received: from {client}"]
    if origin.tls:
        lines.append(f"\t(using {origin.tls})")
    if origin.user:
        lines.append(f"\t(Authenticated sender: {origin.user})")
    lines.append(f"\tby {hostname} (relay) with {origin.protocol} id {queue_id}")
    stamp = rfc5322_date(now)
    if len(recipients) == 1:  # like Postfix, name the recipient only when there is one
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += f"; {stamp}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def missing_headers(inspected: Inspected, hostname: str, queue_id: str, now: float) -> bytes:
    added = b""
    if "message-id" not in inspected.header_names:
        added += f"Message-ID: <{queue_id}@{hostname}>\r\n".encode("ascii", "replace")
    if "date" not in inspected.header_names:
        added += f"Date: {rfc5322_date(now)}\r\n".encode("ascii")
    return added


def _without(header: bytes, fields: Sequence[tuple[int, int]]) -> bytes:
    """The header section less the given fields (the application's metadata is for the
    relay only: it never leaves)."""
    if not fields:
        return header
    kept, start = [], 0
    for begin, end in fields:
        kept.append(header[start:begin])
        start = end
    kept.append(header[start:])
    return b"".join(kept)


class Cleanup:
    """Finishes messages and stores them; `on_stored` wakes the scheduler."""

    def __init__(self, queue: MessageStore, hostname: str,
                 on_stored: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._hostname = hostname
        self._on_stored = on_stored
        self._clock = clock

    async def submit(self, mail_from: str, recipients: Sequence[str], data: bytes,
                     origin: Origin, inspected: Inspected | None = None,
                     smtputf8: bool = False, idempotency: Idempotency | None = None,
                     tracking: Tracking = NO_TRACKING) -> str:
        """Store the finished message durably and return its queue id; raise Rejected.
        `tracking` is what the API says of the message for its history."""
        inspected = inspected or inspect_message(data)
        tracking = application_tracking(inspected, tracking)
        queue_id = new_queue_id()
        now = self._clock()
        cut = inspected.header_end
        body = data[cut:]
        # A body that starts without the blank separator line gets one, as Postfix does.
        separator = b"\r\n" if body and not body.startswith((b"\r\n", b"\n")) else b""
        finished = b"".join((
            received_header(self._hostname, origin, queue_id, recipients, now),
            _without(data[:cut], inspected.relay_fields),
            missing_headers(inspected, self._hostname, queue_id, now),
            separator,
            body,
        ))
        await self._queue.store(NewMessage(queue_id, mail_from, tuple(recipients), finished,
                                           smtputf8, idempotency, tracking))
        self._on_stored()
        return queue_id
