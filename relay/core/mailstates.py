"""mailstates: the states a recipient of a queued message goes through, and the events
of its life that applications hear of (webhooks, history). Below every stage and the
configuration: the queue stores them, delivery and the API speak them, and the
configuration names event types (`[[webhooks]] events`).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


class EventType(StrEnum):
    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"  # not sent: the address is on its stream's suppression list
    CANCELLED = "cancelled"  # a broadcast recipient dropped by its broadcast's cancel
    HELD = "held"  # by an operator, like the three below
    RELEASED = "released"
    REQUEUED = "requeued"  # made due now (flush, requeue)
    DELETED = "deleted"
    COMPLAINED = "complained"  # a spam complaint (ARF report) came back (relay.feedback)
    UNSUBSCRIBED = "unsubscribed"  # one-click unsubscribe (RFC 8058), or its mailto form
