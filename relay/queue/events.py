"""queue.events: what happened to each recipient (events) and each message (history).

Every change of a recipient's state is an event, written by the backend in the
transaction that makes the change (an outbox): a crash loses none and none describes a
change that did not happen. Event ids grow with every event (the cursor of
`GET /v1/events`), so the events of one recipient are ordered by id. A message's history
row (envelope, subject, size, API metadata and tags) is written with the message and
outlives it for `[history] retention`; pruning removes only what left the queue.

Both backends read and write the same columns; the SQL that reads them is built here for
either placeholder style (`?` for SQLite, `$n` for PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from typing import Any

from relay.core.mailstates import EventType as EventType  # re-exported: events speak it
from relay.core.mailstates import State
from relay.queue.base import Outcome
from relay.queue.dialect import Params

PRUNE_BATCH = 1000  # rows a pruning transaction removes at most
MAX_PAGE = 1000  # events one GET /v1/events returns at most


# Whether a copy's feedback of a kind was recorded already (message, recipient, type):
# a report taken in again after a crash, before its own outcome was committed, is the
# same report. Both dialects, their placeholders filled in.
FEEDBACK_SEEN = ("SELECT 1 FROM events WHERE message_id = {} AND recipient = {} "
                 "AND type = {} LIMIT 1")


def outcome_event(outcome: Outcome) -> EventType:
    if outcome.suppressed:
        return EventType.SUPPRESSED
    return {State.DELIVERED: EventType.DELIVERED, State.DEFERRED: EventType.DEFERRED,
            State.BOUNCED: EventType.BOUNCED}[outcome.state]


@dataclass(frozen=True)
class Feedback:
    """What came back about a delivered copy (relay.feedback): a bounce that came later,
    a complaint or an unsubscribe; recorded as an event of its message and recipient and,
    when `suppress_in` names a stream ("*": every one), a suppression there."""

    kind: EventType  # BOUNCED, COMPLAINED or UNSUBSCRIBED
    message_id: str
    recipient: str
    data: dict[str, Any]
    suppress_in: str | None
    reason: str  # the suppression's

    @property
    def data_json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"))


@dataclass(frozen=True)
class Event:
    id: int
    type: EventType
    at: float
    message_id: str
    recipient: str
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None  # the message's, from its history
    tags: tuple[str, ...] = ()
    api_key: str = ""  # the API key that submitted the message
    position: str = ""  # the backend's cursor just after this event (EventPage)

    def to_json(self) -> dict[str, Any]:
        return {"id": event_id(self.id), "type": self.type.value, "at": self.at,
                "message_id": self.message_id, "recipient": self.recipient,
                "data": self.data, "metadata": self.metadata, "tags": list(self.tags),
                "api_key": self.api_key or None}


def event_id(number: int) -> str:
    """The stable id an event is known by outside (API, webhooks)."""
    return f"evt_{number}"


@dataclass(frozen=True)
class EventFilter:
    """Which events `GET /v1/events` wants: those after the cursor `after` (from an
    EventPage; "" from the start) that match the rest."""

    message_id: str | None = None
    recipient: str | None = None
    types: Sequence[EventType] = ()
    since: float | None = None
    until: float | None = None
    after: str = ""
    limit: int = 100
    api_key: str | None = None  # only messages submitted with this key


@dataclass(frozen=True)
class EventPage:
    """Events oldest first, and the cursor to ask for the next ones with. The cursor is
    the backend's: a later page never misses an event committed after this one was read
    (for SQLite, whose one writer commits in id order, the last id; for PostgreSQL, whose
    ids are taken before commit, the transaction and the id, queue.postgres.events)."""

    events: list[Event]
    cursor: str


@dataclass(frozen=True)
class RecipientTimeline:
    address: str
    state: str  # the last event's type: where the recipient stands
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class MessageHistory:
    id: str
    mail_from: str
    subject: str
    size: int
    received_at: float
    finished_at: float | None  # when it left the queue; None while it is queued
    metadata: dict[str, Any] | None
    tags: tuple[str, ...]
    api_key: str
    recipients: list[RecipientTimeline] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "mail_from": self.mail_from, "subject": self.subject,
            "size": self.size, "received_at": self.received_at,
            "finished_at": self.finished_at, "in_queue": self.finished_at is None,
            "metadata": self.metadata, "tags": list(self.tags),
            "api_key": self.api_key or None,
            "recipients": [{"address": r.address, "state": r.state,
                            "events": [_timeline_entry(e) for e in r.events]}
                           for r in self.recipients]}


def _timeline_entry(event: Event) -> dict[str, Any]:
    return {"id": event_id(event.id), "type": event.type.value, "at": event.at,
            "data": event.data}


# -- writing ---------------------------------------------------------------------------

def outcome_data(outcome: Outcome) -> str:
    """An outcome's event data, JSON: the reply, the attempt, where it went, and for a
    deferral when it is tried next; for a bounce whether the sender got a DSN."""
    data: dict[str, Any] = {"reply": outcome.reply, "attempt": outcome.attempt}
    if outcome.relay:
        data["relay"] = outcome.relay
    if outcome.tls:
        data["tls"] = outcome.tls
    if outcome.state is State.DEFERRED:
        data["next_attempt_at"] = outcome.next_attempt_at
    if outcome.state is State.BOUNCED:
        data["dsn"] = outcome.dsn
    return json.dumps(data, separators=(",", ":"))


def metadata_json(metadata: dict[str, Any] | None) -> str | None:
    return None if metadata is None else json.dumps(metadata, separators=(",", ":"))


# -- reading ---------------------------------------------------------------------------

EventRow = tuple[str, str, str | None]  # one to write: message id, recipient, data (JSON)

# Columns of an event row as both backends select them (events e joined to history h).
EVENT_COLUMNS = ("e.id, e.type, e.at, e.message_id, e.recipient, e.data, h.metadata, "
                 "h.tags, h.api_key")
EVENT_FROM = "events e LEFT JOIN history h ON h.message_id = e.message_id"
HISTORY_COLUMNS = ("message_id, mail_from, subject, size, received_at, finished_at, "
                   "metadata, tags, api_key")


def filter_sql(wanted: EventFilter, params: Params, conditions: Sequence[str] = ()) -> str:
    """The WHERE clause of an event filter, after the backend's own `conditions`; its
    values go to `params` (queue.dialect), after those of the conditions."""
    conditions = list(conditions) or ["TRUE"]
    if wanted.message_id is not None:
        conditions.append(f"e.message_id = {params(wanted.message_id)}")
    if wanted.recipient is not None:
        conditions.append(f"lower(e.recipient) = {params(wanted.recipient.lower())}")
    if wanted.since is not None:
        conditions.append(f"e.at >= {params(wanted.since)}")
    if wanted.until is not None:
        conditions.append(f"e.at < {params(wanted.until)}")
    if wanted.api_key is not None:
        conditions.append(f"h.api_key = {params(wanted.api_key)}")
    if wanted.types:
        conditions.append(f"e.type IN ({', '.join(params(k.value) for k in wanted.types)})")
    return " AND ".join(conditions)


def event_of(row: Sequence[Any], position: str | None = None) -> Event:
    """A row of EVENT_COLUMNS; its position is its id unless the backend says otherwise."""
    return Event(int(row[0]), EventType(row[1]), float(row[2]), row[3], row[4],
                 json.loads(row[5]) if row[5] else {},
                 json.loads(row[6]) if row[6] else None, _tags(row[7]), row[8] or "",
                 str(row[0]) if position is None else position)


def history_of(row: Sequence[Any], events: Sequence[Event]) -> MessageHistory:
    """A row of HISTORY_COLUMNS and the message's events in order: timelines per
    recipient, in the order they were accepted."""
    by_recipient: dict[str, list[Event]] = {}
    for event in events:
        if event.recipient:
            by_recipient.setdefault(event.recipient, []).append(event)
    recipients = [RecipientTimeline(address, mine[-1].type.value, mine)
                  for address, mine in by_recipient.items()]
    return MessageHistory(row[0], row[1], decoded_subject(row[2]), int(row[3]),
                          float(row[4]), None if row[5] is None else float(row[5]),
                          json.loads(row[6]) if row[6] else None, _tags(row[7]),
                          row[8] or "", recipients)


def decoded_subject(raw: str) -> str:
    """A Subject: field as people read it (RFC 2047 words decoded); as it is when it
    cannot be decoded."""
    if "=?" not in raw:
        return raw
    try:
        return str(make_header(decode_header(raw)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return raw


def _tags(value: str | None) -> tuple[str, ...]:
    return tuple(json.loads(value)) if value else ()


def tags_json(tags: Sequence[str]) -> str | None:
    return json.dumps(list(tags), separators=(",", ":")) if tags else None
