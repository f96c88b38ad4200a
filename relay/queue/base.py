"""queue.base: the queue interface every backend implements, and its records.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from relay.queue.apikeys import ApiKey, ConsoleSession
    from relay.queue.events import EventFilter, EventPage, Feedback, MessageHistory
    from relay.queue.overview import Activity, LeaseHolder, NodeInfo
    from relay.queue.webhooks import WebhookEndpoint, WebhookState


class State(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


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


class MessageStore(Protocol):
    """The part of the queue that intake (cleanup) needs."""

    async def store(self, message: NewMessage) -> None:
        """Durably store a message; raise LocalFailure if it could not be."""


class Queue(MessageStore, Protocol):
    """The durable store. Backends: `local` (files + SQLite), `postgres`."""

    async def open(self) -> None:
        """Create or recover the store; in-flight recipients return to the queue."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise LocalFailure when the store cannot be used now (a database that cannot be
        reached): what readiness probes ask."""

    async def claim_due(self, limit: int) -> list[Claimed]:
        """Lease up to `limit` due recipients and count the attempt."""

    async def renew_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        """Extend the leases of (recipient_id, attempt) claims still being worked on."""

    async def return_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        """Give (recipient_id, attempt) claims back unworked: due again now."""

    async def take_slot(self, destination: str, limit: int) -> str | None:
        """A connection slot for `destination`, counted across every node that shares the
        queue (at most `limit` at once), leased like recipients; its token, or None when
        all are taken. A single node's backend needs none: its scheduler counts."""

    async def renew_slots(self) -> None:
        """Extend the leases of the slots this node holds."""

    async def release_slot(self, token: str) -> None: ...

    async def next_due_at(self) -> float | None:
        """When the earliest queued or deferred recipient (or lease) becomes due."""

    async def read_body(self, message_id: str) -> bytes: ...

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Apply outcomes; messages with only final recipients leave the queue."""

    async def list_messages(
        self, state: State | None = None, domain: str | None = None, sender: str = "",
        received_before: float | None = None, limit: int | None = None
    ) -> list[MessageInfo]:
        """Messages in the queue, oldest first: with a recipient in `state` or at `domain`,
        a sender containing `sender` (any case), received at or before `received_before`;
        at most `limit`."""

    async def get_message(self, message_id: str) -> MessageInfo | None: ...

    async def stats(self) -> QueueStats: ...

    async def idempotent_answer(self, key: str) -> IdempotentAnswer | None:
        """The answer stored with `key` within IDEMPOTENCY_WINDOW, if any."""

    async def summary(self, state: State | None = None,
                      by: ShapeKey = "recipient") -> list[DomainShape]:
        """Waiting recipients per destination domain and age bucket, busiest first; with
        `by="sender"`, messages per sender domain (qshape -s)."""

    # -- broadcasts (stored once: a template and a row per recipient) -----------------

    async def open_broadcast(self, broadcast_id: str, mail_from: str, template: bytes,
                             smtputf8: bool, tracking: Tracking = NO_TRACKING) -> None:
        """Store the template; recipients follow with add_broadcast_recipients."""

    async def add_broadcast_recipients(self, broadcast_id: str,
                                       recipients: Sequence[tuple[str, str]]) -> int:
        """Add (address, fields JSON) pairs, not yet due; return how many were suppressed."""

    async def accept_broadcast(self, broadcast_id: str, rejected: int,
                               idempotency: Idempotency | None,
                               answer: dict[str, Any]) -> None:
        """Durably make the broadcast's recipients due (then the API may answer 202)."""

    async def abandon_broadcast(self, broadcast_id: str) -> None: ...

    async def broadcast_status(self, broadcast_id: str) -> BroadcastStatus | None: ...

    async def broadcasts(self, limit: int = 100, state: str | None = None,
                         after: tuple[float, str] | None = None) -> list[BroadcastStatus]:
        """The newest `limit` broadcasts in `state` (any when None), newest first; `after`:
        those after the one created then with that id (the previous page's last)."""

    async def cancel_broadcast(self, broadcast_id: str) -> BroadcastStatus | None:
        """Drop what has not been sent; None if there is no such broadcast."""

    async def suppressions(self, stream: str | None = None) -> list[Suppression]:
        """The suppression list, or the entries of one stream."""

    async def suppress(self, address: str, reason: str, stream: str = EVERY_STREAM) -> bool:
        """False when the address was on the stream's list already."""

    async def unsuppress(self, address: str, stream: str | None = None) -> int:
        """Take the address off one stream's list, or off every one; how many entries."""

    # -- what comes back later (relay.feedback) ------------------------------------------

    async def return_path(self, token: str) -> ReturnPath | None:
        """The delivered copy a VERP token was sent with, while its history is kept."""

    async def record_feedback(self, report: Feedback) -> bool:
        """Durably write a late bounce, complaint or unsubscribe: its event (when the
        message's history is still kept) and its suppression. False when the suppression
        was there already (then an unsubscribe writes no second event)."""

    async def flush(self, selection: Selection) -> int:
        """Make deferred (and queued) recipients due now; return how many."""

    async def requeue(self, selection: Selection) -> int:
        """Put every recipient not yet final back to `queued`, due now, whatever its state
        (Postfix's `postsuper -r`); an outcome still due from a delivery in flight is then
        ignored. Returns how many."""

    async def hold(self, selection: Selection) -> int:
        """Hold the waiting (queued, deferred) recipients; return how many."""

    async def release(self, selection: Selection) -> int:
        """Held recipients back to `queued`, due now; return how many."""

    async def delete(self, selection: Selection) -> int:
        """Remove messages and all their recipients (not broadcasts: those are cancelled);
        return how many messages."""

    async def missing(self, message_ids: Sequence[str]) -> list[str]:
        """Those of `message_ids` that are not in the queue, in their order."""

    # -- what happened (queue.events) ---------------------------------------------------

    async def history(self, message_id: str) -> MessageHistory | None:
        """A message's envelope, subject, metadata and every recipient's timeline, while
        it is queued and for the retention time after it left; None when unknown."""

    async def events(self, wanted: EventFilter) -> EventPage:
        """Events matching `wanted`, oldest first, at most `wanted.limit`."""

    async def count_events(self, wanted: EventFilter, cap: int) -> int:
        """How many events match `wanted` (its limit aside), counting up to `cap`."""

    async def prune_history(self, before: float) -> int:
        """Remove up to PRUNE_BATCH rows of history and events of messages that left the
        queue before `before`; never anything of a message still queued. How many."""

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def activity(self, since: float, step: float) -> list[Activity]:
        """Delivery outcomes (delivered, deferred, bounced events) since `since`, counted
        per `step` seconds, oldest first; buckets without any are left out."""

    async def lease_holders(self) -> list[LeaseHolder]:
        """The nodes that hold leases now (recipients, connection slots, webhook
        endpoints); the local backend, a single node, has none to show."""

    async def nodes(self) -> list[NodeInfo]:
        """The nodes of a cluster by name, with their last heartbeat; none for local."""

    # -- webhooks (queue.webhooks) -------------------------------------------------------

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        """The endpoints added through the API."""

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None: ...

    async def remove_webhook_endpoint(self, endpoint_id: str) -> bool: ...

    async def webhook_states(self) -> list[WebhookState]: ...

    async def start_webhook(self, endpoint_id: str) -> None:
        """Give an endpoint of relay.toml its delivery state, if it has none: its events
        are those that come after now (add_webhook_endpoint does this for the API's)."""

    async def lease_webhook(self, endpoint_id: str, owner: str,
                            seconds: float) -> WebhookState | None:
        """The endpoint's delivery state, leased to `owner` for `seconds`; None while
        another owner holds it, or when it has none."""

    async def save_webhook(self, state: WebhookState, owner: str) -> bool:
        """Write the state while `owner` holds its lease; False when it does not."""

    async def enable_webhook(self, endpoint_id: str) -> bool: ...

    # -- the admin API's keys (queue.apikeys) -------------------------------------------

    async def api_keys(self) -> list[ApiKey]: ...

    async def api_key(self, digest: str) -> ApiKey | None:
        """The key with this SHA-256 digest (revoked ones too)."""

    async def add_api_key(self, key: ApiKey) -> None: ...

    async def revoke_api_key(self, key_id: str) -> bool: ...

    # -- the console's sessions (queue.apikeys) -----------------------------------------

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None:
        """Keep a session for `lifetime` seconds (and drop the ones that expired)."""

    async def console_session(self, id_digest: str) -> ConsoleSession | None:
        """The session, while it has not expired."""

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int:
        """End one session (signing out), or every one signed in with a token (its key
        revoked); how many."""


# Shared by the backends: SQL both dialects read alike, and their query results into the
# records above.

# Recipients not yet final: the queue's content.
WAITING = "state NOT IN ('delivered', 'bounced')"
# The recipients of a broadcast still being uploaded wait, held, until it is accepted:
# operator commands leave them alone.
NOT_RECEIVING = "message_id NOT IN (SELECT id FROM broadcasts WHERE state = 'receiving')"
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


def summary_sql(by: ShapeKey, now: str, condition: str) -> str:
    """qshape's query for both dialects: rows (key, age bucket, count), the bucket computed
    in SQL so that a million recipients never become Python rows. `now` is the SQL for the
    current time; the key is the recipient's domain, or the sender (grouped by its domain
    in domain_shapes, messages counted once)."""
    bucket = " ".join(f"WHEN age < {limit} THEN {i}"
                      for i, limit in enumerate(SUMMARY_AGE_BUCKETS))
    key, count = (("r.domain", "COUNT(*)") if by == "recipient"
                  else ("m.mail_from", "COUNT(DISTINCT message_id)"))
    return (f"SELECT key, CASE {bucket} ELSE {len(SUMMARY_AGE_BUCKETS)} END AS bucket, "
            f"{count} FROM (SELECT {key} AS key, r.message_id AS message_id, "
            f"({now} - m.received_at) / 60.0 AS age FROM recipients r "
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


def broadcasts_page_sql(limit: int, state: str | None, after: tuple[float, str] | None,
                        placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The query of `Queue.broadcasts` and its parameters; `placeholder(n)` writes the
    n-th parameter (1-based) in the backend's style. "done" and "sending" are one stored
    state told apart by whether the broadcast finished."""
    conditions: list[str] = []
    params: list[Any] = []

    def param(value: Any) -> str:
        params.append(value)
        return placeholder(len(params))

    if state == "done":
        conditions.append("b.state = 'sending' AND b.finished_at IS NOT NULL")
    elif state == "sending":
        conditions.append("b.state = 'sending' AND b.finished_at IS NULL")
    elif state is not None:
        conditions.append(f"b.state = {param(state)}")
    if after is not None:
        created, after_id = after
        conditions.append(f"(b.created_at < {param(created)} OR "
                          f"(b.created_at = {param(created)} AND b.id > {param(after_id)}))")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"{BROADCAST_STATUS_SELECT}{where} ORDER BY b.created_at DESC, b.id "
            f"LIMIT {param(limit)}"), params
