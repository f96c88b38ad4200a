"""delivery: resolve the next hop (mx), talk SMTP to it (client), and report per-recipient
results (agent). The scheduler decides what happens to each result."""

from relay.delivery.agent import (
    RELAYHOST,
    Attempt,
    DeliveryAgent,
    DestinationSession,
    Job,
    Transport,
)
from relay.delivery.client import Credentials, relayhost_credentials
from relay.delivery.mx import Hop, NextHops

__all__ = ["RELAYHOST", "Attempt", "Credentials", "DeliveryAgent", "DestinationSession",
           "Hop", "Job", "NextHops", "Transport", "relayhost_credentials"]
