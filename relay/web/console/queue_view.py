"""console.queue_view: what the console's queue page shows, and what its bulk actions act
on: one filter for both.

A filter (state, destination domain, sender, age) picks messages, and of each message the
page shows the recipients the filter is about: those in the state, at the domain. A long
list is counted by state and cut after RECIPIENTS_SHOWN, so that a broadcast of thousands
is a few lines. A bulk action (flush, hold, release, requeue) acts on exactly the
messages the filter picks, after a page that says how many and asks.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from relay.queue import MessageInfo, RecipientInfo, State

WAITING = (State.QUEUED, State.ACTIVE, State.DEFERRED, State.HELD)
RECIPIENTS_SHOWN = 10  # of a message, on the queue page; the others are counted
_MINUTES = re.compile(r"\d{1,9}")


@dataclass(frozen=True)
class QueueFilter:
    state: str = ""
    domain: str = ""
    sender: str = ""
    age: str = ""  # minutes: older than this

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> QueueFilter:
        return cls(fields.get("state", "").strip(), fields.get("domain", "").strip().lower(),
                   fields.get("sender", "").strip(), fields.get("age", "").strip())

    @property
    def problem(self) -> str:
        if self.state and self.state not in {s.value for s in WAITING}:
            return (f"state: {self.state[:40]!r} is not one of "
                    + ", ".join(s.value for s in WAITING))
        if self.age and not _MINUTES.fullmatch(self.age):
            return "age: give whole minutes"
        return ""

    @property
    def empty(self) -> bool:
        return not (self.state or self.domain or self.sender or self.age)

    def query(self, now: float | None = None) -> dict[str, Any]:
        """Queue.list_messages's arguments for it (a valid one)."""
        before = None
        if self.age:
            before = (time.time() if now is None else now) - int(self.age) * 60
        return {"state": State(self.state) if self.state else None,
                "domain": self.domain or None, "sender": self.sender,
                "received_before": before}

    def as_query_string(self) -> str:
        return urlencode({k: v for k, v in self.fields().items() if v})

    def fields(self) -> dict[str, str]:
        return {"state": self.state, "domain": self.domain, "sender": self.sender,
                "age": self.age}

    def description(self) -> str:
        """In words, for the page that asks before a bulk action."""
        parts = [f"a recipient {self.state}" if self.state else "",
                 f"a recipient at {self.domain}" if self.domain else "",
                 f"a sender containing {self.sender!r}" if self.sender else "",
                 f"received over {self.age} minutes ago" if self.age else ""]
        said = [part for part in parts if part]
        return "every message in the queue" if not said else (
            "every message with " + ", ".join(said))

    def covers(self, recipient: RecipientInfo) -> bool:
        """Whether the page shows this recipient of a message the filter picked."""
        if self.state and recipient.state.value != self.state:
            return False
        return not self.domain or recipient.address.rpartition("@")[2].lower() == self.domain


@dataclass(frozen=True)
class Row:
    """A message on the queue page: the recipients shown, and what the others are."""

    message: MessageInfo
    shown: list[RecipientInfo]
    hidden: int  # recipients the filter is about, beyond those shown
    states: list[tuple[str, int]]  # every recipient of the message, counted by state

    @property
    def total(self) -> int:
        return len(self.message.recipients)


def rows_of(messages: list[MessageInfo], wanted: QueueFilter) -> list[Row]:
    rows = []
    for message in messages:
        covered = [r for r in message.recipients if wanted.covers(r)]
        rows.append(Row(message, covered[:RECIPIENTS_SHOWN],
                        max(0, len(covered) - RECIPIENTS_SHOWN), states_of(message.recipients)))
    return rows


def states_of(recipients: list[RecipientInfo]) -> list[tuple[str, int]]:
    """How many recipients are in each state, in the order of their lives."""
    counted = Counter(r.state for r in recipients)
    return [(state.value, counted[state]) for state in State if counted[state]]
