"""relay.notify.webhooks.advance: what a batch's answers do to an endpoint's state, and the
Standard Webhooks signature (checked against the `standardwebhooks` package)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from relay.notify.webhooks import Schedule, advance, new_secret, payload, signature
from relay.queue.events import Event, EventType
from relay.queue.webhooks import WebhookState

SCHEDULE = Schedule(max_in_flight=3, min_backoff=10, max_backoff=40, give_up_after=100,
                    disable_after=300)
NOW = 1000.0


def events(*positions: str) -> list[Event]:
    return [Event(int(p), EventType.DELIVERED, 1.0, "Q", "a@x.test", {}, position=p)
            for p in positions]


@pytest.mark.parametrize(("before", "delivered", "after"), [
    # all delivered: past the batch, failures forgotten
    (WebhookState("e", "0", attempts=2, head_failing_since=950, failing_since=900),
     [True, True], WebhookState("e", "2")),
    # the first fails: stay, first failure of that event, retry after min_backoff
    (WebhookState("e", "0"), [False, True],
     WebhookState("e", "0", attempts=1, head_failing_since=NOW, failing_since=None,
                  next_attempt_at=NOW + 10)),
    # it fails again: backoff doubles, the endpoint has been failing since then
    (WebhookState("e", "0", attempts=1, head_failing_since=990, failing_since=990),
     [False, False], WebhookState("e", "0", attempts=2, head_failing_since=990,
                                  failing_since=990, next_attempt_at=NOW + 20)),
    # capped at max_backoff
    (WebhookState("e", "0", attempts=5, head_failing_since=950, failing_since=950),
     [False], WebhookState("e", "0", attempts=6, head_failing_since=950,
                           failing_since=950, next_attempt_at=NOW + 40)),
    # progress then a failure: past what went, a new head event
    (WebhookState("e", "0", attempts=3, head_failing_since=950), [True, False],
     WebhookState("e", "1", attempts=1, head_failing_since=NOW, failing_since=None,
                  next_attempt_at=NOW + 10)),
    # failing for give_up_after: that event is dropped, the next is tried
    (WebhookState("e", "0", attempts=7, head_failing_since=NOW - 100, failing_since=800),
     [False], WebhookState("e", "1", attempts=0, head_failing_since=None, failing_since=800,
                           next_attempt_at=NOW + 10)),
    # no 2xx for disable_after: disabled
    (WebhookState("e", "0", attempts=2, head_failing_since=990, failing_since=NOW - 300),
     [False], WebhookState("e", "0", attempts=3, head_failing_since=990,
                           failing_since=NOW - 300, next_attempt_at=NOW + 40,
                           disabled_at=NOW)),
])
def test_advance(before: WebhookState, delivered: list[bool], after: WebhookState) -> None:
    result = advance(before, events(*map(str, range(1, len(delivered) + 1))), delivered,
                     NOW, SCHEDULE)
    assert result.state == after
    assert result.disabled == (after.disabled_at is not None)
    assert (result.dropped is not None) == (before.head_failing_since == NOW - 100)


def test_the_signature_is_what_standard_webhooks_verifies() -> None:
    secret = new_secret()
    body = payload(events("7")[0])
    stamp = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "evt_7", "webhook-timestamp": str(stamp),
               "webhook-signature": signature(secret, "evt_7", stamp, body)}
    assert Webhook(secret).verify(body, headers)["type"] == "delivered"
    assert payload(events("7")[0]) == body  # the same bytes every time
