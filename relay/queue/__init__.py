"""queue: the durable store. One interface (`Queue`, queue.roles), backends behind it."""

from relay.queue.base import (
    MAX_METADATA,
    SUMMARY_AGE_BUCKETS,
    BroadcastStatus,
    Claimed,
    DomainShape,
    Idempotency,
    IdempotentAnswer,
    MessageInfo,
    MessageMeta,
    NewMessage,
    Outcome,
    QueueStats,
    RecipientInfo,
    Selection,
    ShapeKey,
    State,
    Suppression,
    Tracking,
    domain_of,
    new_queue_id,
)
from relay.queue.roles import MessageStore, Queue

__all__ = [
    "MAX_METADATA", "SUMMARY_AGE_BUCKETS", "BroadcastStatus", "Claimed", "DomainShape",
    "Idempotency", "IdempotentAnswer", "MessageInfo", "MessageMeta", "MessageStore",
    "NewMessage", "Outcome", "Queue", "QueueStats", "RecipientInfo", "Selection", "ShapeKey",
    "State", "Suppression", "Tracking", "domain_of", "new_queue_id",
]
