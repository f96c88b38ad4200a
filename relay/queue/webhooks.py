"""queue.webhooks: what the queue keeps for webhook delivery (relay.notify.webhooks): endpoints
added through the API, and each endpoint's place in the event stream.

An endpoint's state is its cursor into the events (queue.events: everything before it
was delivered, or given up), how the event at the cursor is failing, and whether the
endpoint is disabled. One node at a time delivers to an endpoint: it holds the state's
lease (owner, expiry in the backend's clock) and its writes are fenced by it, so events
go out in order and a node that lost its lease changes nothing. A new endpoint starts at
the events that come after it was added.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.queue.events import EventType


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    url: str
    events: tuple[EventType, ...]  # empty: every type
    secret: str  # "whsec_" and base64 (Standard Webhooks)
    created_at: float = 0.0
    from_config: bool = False  # [[webhooks]] in relay.toml; else added through the API

    def to_json(self) -> dict[str, Any]:
        """As the API lists it: never the secret."""
        return {"id": self.id, "url": self.url, "events": [e.value for e in self.events],
                "created_at": self.created_at, "from_config": self.from_config}


@dataclass(frozen=True)
class WebhookState:
    endpoint: str
    cursor: str  # events up to here are done with
    attempts: int = 0  # failed tries of the event just after the cursor
    head_failing_since: float | None = None  # when that event first failed
    failing_since: float | None = None  # when the endpoint last stopped answering 2xx
    next_attempt_at: float = 0.0
    disabled_at: float | None = None


# Columns of webhook_state as both backends select them.
STATE_COLUMNS = ("endpoint, cursor, attempts, head_failing_since, failing_since, "
                 "next_attempt_at, disabled_at")
ENDPOINT_COLUMNS = "id, url, events, secret, created_at"


def state_of(row: Sequence[Any]) -> WebhookState:
    return WebhookState(row[0], row[1], int(row[2]), row[3], row[4], float(row[5]), row[6])


def state_values(state: WebhookState) -> tuple[Any, ...]:
    """What save writes, in STATE_COLUMNS order after the endpoint."""
    return (state.cursor, state.attempts, state.head_failing_since, state.failing_since,
            state.next_attempt_at, state.disabled_at)


def endpoint_of(row: Sequence[Any]) -> WebhookEndpoint:
    return WebhookEndpoint(row[0], row[1], tuple(EventType(e) for e in json.loads(row[2])),
                           row[3], float(row[4]))


def events_json(events: Sequence[EventType]) -> str:
    return json.dumps([e.value for e in events])
