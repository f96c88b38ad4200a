"""queue.base: the queue's records, and what both backends share to read and write them
(the interface is queue.roles).

Contract (docs/architecture.md, "The queue contract"):
- `store` returns only when the body and the index entry are durable; only then may the
  caller answer 250.
- Each recipient has its own state (`State`). `claim_due` moves due recipients to `active`
  and records the attempt (attempt count, time) before any network I/O.
- `record` applies delivery outcomes; a recipient becomes `delivered` only after the
  remote 250. A message whose recipients are all final leaves the queue with its body.
- After a crash, `open` returns in-flight recipients to the queue (at-least-once).
- Every change of a recipient's state writes its event (queue.events) in the transaction
  that makes the change; a message's history outlives it for the retention time.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.core.mailstates import State as State  # re-exported: the queue speaks it

_ID_RANDOM = random.Random(secrets.randbits(64))  # unpredictability is not needed here


def new_queue_id() -> str:
    """Sortable by arrival (microseconds, hex) and unique (random suffix; a collision
    fails the exclusive file create, and the client retries)."""
    return f"{time.time_ns() // 1000:013X}{_ID_RANDOM.getrandbits(24):06X}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Idempotency:
    """An API request's Idempotency-Key and the digest of its body; committed with what
    the request stored, so that a retry finds it."""

    key: str
    digest: str


@dataclass(frozen=True)
class IdempotentAnswer:
    digest: str  # of the first request's body
    answer: str  # the first answer, JSON


IDEMPOTENCY_WINDOW = 24 * 3600.0


MAX_METADATA = 4096  # characters of JSON: an application's metadata for one message

# Streams: what a message belongs to, for the suppression list. Unsubscribes and
# complaints suppress an address in one stream; hard bounces in every one (EVERY_STREAM).
TRANSACTIONAL = "transactional"  # SMTP and POST /v1/messages, unless told otherwise
BROADCAST = "broadcast"  # POST /v1/broadcasts, unless told otherwise
EVERY_STREAM = "*"
STREAM_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# A stream a suppression holds in: a stream's name, or EVERY_STREAM.
SUPPRESSION_STREAM_PATTERN = rf"{STREAM_PATTERN}|^[*]$"


@dataclass(frozen=True)
class Tracking:
    """What a message's history keeps besides its envelope (queue.events): its subject
    as written (RFC 2047 words undecoded), the application's metadata and tags, and the
    API key that submitted it."""

    subject: str = ""
    metadata: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()
    api_key: str = ""  # the id of the admin API key that submitted it; "" for SMTP
    stream: str = TRANSACTIONAL

    def fields(self) -> dict[str, Any]:
        """As JSON fields (a queue file's envelope, a handoff request); none when empty."""
        found: dict[str, Any] = {}
        if self.subject:
            found["subj"] = self.subject
        if self.metadata is not None:
            found["meta"] = self.metadata
        if self.tags:
            found["tags"] = list(self.tags)
        if self.api_key:
            found["key"] = self.api_key
        if self.stream != TRANSACTIONAL:
            found["strm"] = self.stream
        return found

    @classmethod
    def of_fields(cls, fields: dict[str, Any]) -> Tracking:
        metadata = fields.get("meta")
        return cls(str(fields.get("subj", "")),
                   metadata if isinstance(metadata, dict) else None,
                   tuple(map(str, fields.get("tags", ()))), str(fields.get("key", "")),
                   str(fields.get("strm", TRANSACTIONAL)))


NO_TRACKING = Tracking()


@dataclass(frozen=True)
class MessageMeta:
    """What the index records of a new message (its body is a file, or a column)."""

    id: str
    mail_from: str  # "" is the null sender (bounces)
    recipients: Sequence[str]
    size: int
    smtputf8: bool = False
    idempotency: Idempotency | None = None
    tracking: Tracking = NO_TRACKING


@dataclass(frozen=True)
class NewMessage:
    """A cleaned-up message ready to be stored."""

    id: str
    mail_from: str  # "" is the null sender (bounces)
    recipients: Sequence[str]
    data: bytes
    smtputf8: bool = False
    idempotency: Idempotency | None = None
    tracking: Tracking = NO_TRACKING

    @property
    def meta(self) -> MessageMeta:
        return MessageMeta(self.id, self.mail_from, self.recipients, len(self.data),
                           self.smtputf8, self.idempotency, self.tracking)


@dataclass(frozen=True)
class Claimed:
    """One recipient leased for delivery, with what delivery needs of its message."""

    recipient_id: int
    message_id: str
    address: str
    domain: str
    attempts: int  # including the attempt now being made
    mail_from: str
    received_at: float
    smtputf8: bool
    fields: str | None = None  # a broadcast recipient's fields (JSON); None for mail
    stream: str = TRANSACTIONAL
    suppressed: str = ""  # why the address is on the suppression list of its stream, if it is


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed recipient."""

    recipient_id: int
    attempt: int  # Claimed.attempts of the claim it answers: the lease's fencing token
    state: State  # DELIVERED, DEFERRED or BOUNCED
    reply: str
    next_attempt_at: float | None = None  # for DEFERRED
    broadcast: bool = False  # the recipient belongs to a broadcast (counted there)
    relay: str = ""  # "host[address]:port" that answered; "" when none did
    tls: str = ""  # the TLS version of that connection; "" without TLS
    dsn: bool = False  # for BOUNCED: a DSN went to the sender
    suppressed: bool = False  # for BOUNCED: not sent, the address is on the suppression list
    return_path: str = ""  # the VERP token it was sent with (relay.feedback); "" for none


@dataclass(frozen=True)
class BroadcastStatus:
    id: str
    state: str  # receiving, sending, done, cancelled
    total: int  # recipients accepted (rejected and suppressed ones not included)
    queued: int
    deferred: int
    delivered: int
    bounced: int
    cancelled: int
    suppressed: int
    rejected: int
    created_at: float
    accepted_at: float | None
    finished_at: float | None
    cancelled_at: float | None
    next_attempt_at: float | None = None  # the soonest of its deferred recipients'


@dataclass(frozen=True)
class Suppression:
    address: str
    reason: str
    created_at: float
    stream: str = EVERY_STREAM


@dataclass(frozen=True)
class ReturnPath:
    """Which copy a VERP return path was sent with (relay.feedback): kept from the
    delivery for the history's retention, so that a later bounce finds its recipient."""

    token: str
    message_id: str
    recipient: str
    stream: str


@dataclass(frozen=True)
class RecipientInfo:
    address: str
    state: State
    attempts: int
    next_attempt_at: float | None
    last_reply: str


@dataclass(frozen=True)
class MessageInfo:
    id: str
    mail_from: str
    size: int
    received_at: float
    recipients: list[RecipientInfo] = field(default_factory=list)


@dataclass(frozen=True)
class QueueStats:
    """What monitoring wants to know of the queue as a whole."""

    depth: dict[State, int]  # recipients per state, final states left out
    oldest_received_at: float | None  # of the messages still queued


@dataclass(frozen=True)
class DomainShape:
    """One row of `relayctl queue summary` (Postfix's qshape): a destination domain and
    how many of its recipients waiting in the queue fall in each age bucket (or a sender
    domain and its messages)."""

    domain: str
    total: int
    by_age: list[int]  # one count per bucket of SUMMARY_AGE_BUCKETS


# What queue summary groups by: the recipient's domain (qshape) or the sender's (qshape -s).
ShapeKey = Literal["recipient", "sender"]
# Upper bounds (minutes) of qshape's age buckets; the last bucket is everything older.
SUMMARY_AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True)
class Selection:
    """Which messages an operator command applies to; empty means none."""

    ids: Sequence[str] = ()
    domain: str | None = None
    all: bool = False


# Shared by the backends: SQL both dialects read alike, and their query results into the
# records above.

# Recipients not yet final: the queue's content.
WAITING = "state NOT IN ('delivered', 'bounced')"
# Recipients a claim may take when due; an active one once its lease expired.
CLAIMABLE = "state IN ('queued', 'deferred', 'active')"
# A permanent refusal by the recipient's server; not our own expiry after max_age.
HARD_BOUNCE = "r.last_reply LIKE '5%' AND r.last_reply NOT LIKE '554 5.4.7%'"
DEFAULT_LEASE = 120.0  # seconds a claim is leased for ([queue] lease)
# The recipients of a broadcast still being uploaded wait, held, until it is accepted:
# operator commands leave them alone.
RECEIVING = "(SELECT id FROM broadcasts WHERE state = 'receiving')"
NOT_RECEIVING = f"message_id NOT IN {RECEIVING}"
# Nor are they in any listing, count or summary: the API has not answered 202 for them.
LISTED = f"id NOT IN {RECEIVING}"  # of messages
# Which recipients each operator command changes (requeue: every one not final, active and
# held too, like postsuper -r).
FLUSHABLE = HOLDABLE = "state IN ('queued', 'deferred')"
RELEASABLE = f"state = 'held' AND {NOT_RECEIVING}"
REQUEUABLE = f"{WAITING} AND {NOT_RECEIVING}"
# The messages `delete` removes, given a condition on their recipients.
DELETABLE = ("SELECT id FROM messages WHERE id NOT IN (SELECT id FROM broadcasts) "
             "AND id IN (SELECT message_id FROM recipients WHERE {})")

def messages_with_recipients(messages: Sequence[Sequence[Any]],
                             recipients: Sequence[Sequence[Any]]) -> list[MessageInfo]:
    """Rows (id, mail_from, size, received_at) and (message_id, address, state,
    attempts, next_attempt_at, last_reply), recipients in their order."""
    found = {r[0]: MessageInfo(r[0], r[1], r[2], r[3]) for r in messages}
    for row in recipients:
        next_at = row[4] if row[2] in (State.QUEUED.value, State.DEFERRED.value) else None
        found[row[0]].recipients.append(
            RecipientInfo(row[1], State(row[2]), row[3], next_at, row[5]))
    return list(found.values())


def summary_sql(by: ShapeKey, condition: str) -> str:
    """qshape's query in queue.dialect's SQL: rows (key, age bucket, count), the bucket
    computed in SQL so that a million recipients never become Python rows. The key is the
    recipient's domain, or the sender (grouped by its domain in domain_shapes, messages
    counted once)."""
    bucket = " ".join(f"WHEN age < {limit} THEN {i}"
                      for i, limit in enumerate(SUMMARY_AGE_BUCKETS))
    key, count = (("r.domain", "COUNT(*)") if by == "recipient"
                  else ("m.mail_from", "COUNT(DISTINCT message_id)"))
    return (f"SELECT key, CASE {bucket} ELSE {len(SUMMARY_AGE_BUCKETS)} END AS bucket, "
            f"{count} FROM (SELECT {key} AS key, r.message_id AS message_id, "
            f"(:now - m.received_at) / 60.0 AS age FROM recipients r "
            f"JOIN messages m ON m.id = r.message_id WHERE {condition}) AS aged GROUP BY 1, 2")


def domain_shapes(counts: Sequence[Sequence[Any]], by: ShapeKey) -> list[DomainShape]:
    """Rows (key, age bucket, count) of summary_sql as qshape's table, busiest first."""
    shapes: dict[str, list[int]] = {}
    for key, index, count in counts:
        domain = key if by == "recipient" else domain_of(key) or "MAILER-DAEMON"
        shapes.setdefault(domain, [0] * (len(SUMMARY_AGE_BUCKETS) + 1))[index] += count
    return sorted((DomainShape(d, sum(c), c) for d, c in shapes.items()),
                  key=lambda shape: (-shape.total, shape.domain))


def like_pattern(text: str) -> str:
    """`text` anywhere, for `LIKE ... ESCAPE '\\'` (its own % and _ taken literally)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# A broadcast b as broadcast_status_of reads it, in both dialects: its row, then how many
# of its recipients are deferred and the soonest next attempt among them.
_DEFERRED = "FROM recipients r WHERE r.message_id = b.id AND r.state = 'deferred'"
BROADCAST_STATUS_SELECT = (
    "SELECT b.id, b.state, b.total, b.suppressed, b.rejected, b.delivered, b.bounced, "
    "b.cancelled, b.created_at, b.accepted_at, b.finished_at, b.cancelled_at, "
    f"(SELECT COUNT(*) {_DEFERRED}), (SELECT MIN(r.next_attempt_at) {_DEFERRED}) "
    "FROM broadcasts b")


def broadcast_status_of(row: Sequence[Any]) -> BroadcastStatus:
    """A row of BROADCAST_STATUS_SELECT."""
    broadcast_id, state, total, suppressed, rejected, delivered, bounced, cancelled = row[:8]
    created_at, accepted_at, finished_at, cancelled_at, deferred, next_attempt_at = row[8:14]
    unsent = total - delivered - bounced - cancelled
    if state == "sending" and finished_at is not None:
        state = "done"
    return BroadcastStatus(
        id=broadcast_id, state=state, total=total, queued=unsent - int(deferred),
        deferred=int(deferred), delivered=delivered, bounced=bounced, cancelled=cancelled,
        suppressed=suppressed, rejected=rejected, created_at=created_at,
        accepted_at=accepted_at, finished_at=finished_at, cancelled_at=cancelled_at,
        next_attempt_at=next_attempt_at)


def broadcasts_page_sql(state: str | None, after: tuple[float, str] | None) -> str:
    """The query of `Queue.broadcasts` in queue.dialect's SQL (values :state, :created,
    :after_id, :limit). "done" and "sending" are one stored state told apart by whether
    the broadcast finished."""
    conditions: list[str] = []
    if state == "done":
        conditions.append("b.state = 'sending' AND b.finished_at IS NOT NULL")
    elif state == "sending":
        conditions.append("b.state = 'sending' AND b.finished_at IS NULL")
    elif state is not None:
        conditions.append("b.state = :state")
    if after is not None:
        conditions.append("(b.created_at < :created OR "
                          "(b.created_at = :created AND b.id > :after_id))")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{BROADCAST_STATUS_SELECT}{where} ORDER BY b.created_at DESC, b.id LIMIT :limit"
