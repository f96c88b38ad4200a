"""queue: the durable store. One interface (`Queue`), backends behind it."""

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
    MessageStore,
    NewMessage,
    Outcome,
    Queue,
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

__all__ = [
    "MAX_METADATA", "SUMMARY_AGE_BUCKETS", "BroadcastStatus", "Claimed", "DomainShape",
    "Idempotency", "IdempotentAnswer", "MessageInfo", "MessageMeta", "MessageStore",
    "NewMessage", "Outcome", "Queue", "QueueStats", "RecipientInfo", "Selection", "ShapeKey",
    "State", "Suppression", "Tracking", "domain_of", "new_queue_id",
]
