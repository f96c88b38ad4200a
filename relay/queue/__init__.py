"""queue: the durable store. One interface (`Queue`), backends behind it."""

from relay.queue.base import (
    Claimed,
    MessageInfo,
    MessageMeta,
    MessageStore,
    NewMessage,
    Outcome,
    Queue,
    RecipientInfo,
    Selection,
    State,
    domain_of,
    new_queue_id,
)

__all__ = [
    "Claimed", "MessageInfo", "MessageMeta", "MessageStore", "NewMessage", "Outcome", "Queue",
    "RecipientInfo", "Selection", "State", "domain_of", "new_queue_id",
]
