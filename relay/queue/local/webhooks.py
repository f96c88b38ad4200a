"""queue.local.webhooks: webhook endpoints and delivery state in the local backend's index
(queue.webhooks says what they are). The functions run in the index writer thread."""

from __future__ import annotations

import sqlite3

from relay.queue.webhooks import (
    ENDPOINT_COLUMNS,
    STATE_COLUMNS,
    WebhookEndpoint,
    WebhookState,
    events_json,
    state_of,
    state_values,
)


def add_endpoint(endpoint: WebhookEndpoint, db: sqlite3.Connection) -> None:
    db.execute(f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
               (endpoint.id, endpoint.url, events_json(endpoint.events), endpoint.secret,
                endpoint.created_at))
    start(endpoint.id, db)


def start(endpoint_id: str, db: sqlite3.Connection) -> None:
    """An endpoint's state, if it has none: its events are those that come after now."""
    db.execute("INSERT OR IGNORE INTO webhook_state (endpoint, cursor) VALUES "
               "(?, (SELECT CAST(COALESCE(MAX(id), 0) AS TEXT) FROM events))", (endpoint_id,))


def remove_endpoint(endpoint_id: str, db: sqlite3.Connection) -> bool:
    db.execute("DELETE FROM webhook_state WHERE endpoint = ?", (endpoint_id,))
    return db.execute("DELETE FROM webhook_endpoints WHERE id = ?",
                      (endpoint_id,)).rowcount > 0


def lease(endpoint_id: str, owner: str, now: float, until: float,
          db: sqlite3.Connection) -> WebhookState | None:
    """The endpoint's state, leased to `owner`; None while another owner's lease runs, or
    when it has none (removed: its last round must not bring the row back)."""
    row = db.execute(f"UPDATE webhook_state SET owner = ?, lease_until = ? WHERE endpoint = ? "
                     f"AND (owner = ? OR lease_until < ?) RETURNING {STATE_COLUMNS}",
                     (owner, until, endpoint_id, owner, now)).fetchone()
    return None if row is None else state_of(row)


def save(state: WebhookState, owner: str, db: sqlite3.Connection) -> bool:
    return db.execute("UPDATE webhook_state SET cursor = ?, attempts = ?, "
                      "head_failing_since = ?, failing_since = ?, next_attempt_at = ?, "
                      "disabled_at = ? WHERE endpoint = ? AND owner = ?",
                      (*state_values(state), state.endpoint, owner)).rowcount > 0


def enable(endpoint_id: str, db: sqlite3.Connection) -> bool:
    """Deliver to a disabled endpoint again, from where it stopped."""
    return db.execute("UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, "
                      "attempts = 0, head_failing_since = NULL, next_attempt_at = 0 "
                      "WHERE endpoint = ?", (endpoint_id,)).rowcount > 0
