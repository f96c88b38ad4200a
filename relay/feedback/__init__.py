"""feedback: mail that comes back after delivery, and the links recipients use.

With `[bounces] domain`, every copy goes out from a VERP return path of its own
(feedback.tokens); bounces, ARF complaints and mailto unsubscribes sent there are taken in
by the delivery loop (feedback.intake, reading them with feedback.reports), and broadcasts
carry one-click unsubscribe links served on `[public] listen` (feedback.unsubscribe).
"""

from __future__ import annotations

from relay.config import Config
from relay.feedback.tokens import FeedbackTokens
from relay.secretfiles import load_or_create_token, shared_secret_missing


def configured_tokens(config: Config) -> FeedbackTokens | None:
    """The tokens of `[bounces] domain` with the relay's feedback key (made at first start,
    except on nodes that share a queue: they need the same, the file `secret_file` names);
    None without."""
    if not config.bounces.domain:
        return None
    clustered = config.queue.backend == "postgres"  # which names a file (config checks)
    key = load_or_create_token(config.feedback_key_path, create=not clustered,
                               what="[bounces] secret",
                               missing=shared_secret_missing(config.feedback_key_path))
    return FeedbackTokens(key.encode("utf-8"), config.bounces.domain, config.public.url)
