"""queue: the durable store. One interface (`Queue`), backends behind it."""

from relay.queue.base import (
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
    domain_of,
    new_queue_id,
)

__all__ = [
    "SUMMARY_AGE_BUCKETS", "BroadcastStatus", "Claimed", "DomainShape", "Idempotency",
    "IdempotentAnswer", "MessageInfo", "MessageMeta", "MessageStore", "NewMessage", "Outcome",
    "Queue", "QueueStats", "RecipientInfo", "Selection", "ShapeKey", "State", "Suppression",
    "domain_of", "new_queue_id",
]
