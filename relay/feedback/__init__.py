"""feedback: mail that comes back after delivery, and the links recipients use.

With `[bounces] domain`, every copy goes out from a VERP return path of its own
(feedback.tokens); bounces, ARF complaints and mailto unsubscribes sent there are taken in
by the delivery loop (feedback.intake, reading them with feedback.reports), and broadcasts
carry one-click unsubscribe links served on `[public] listen` (feedback.unsubscribe).
"""

from __future__ import annotations

from relay.admin.token import load_or_create_token
from relay.config import Config
from relay.feedback.tokens import FeedbackTokens


def configured_tokens(config: Config) -> FeedbackTokens | None:
    """The tokens of `[bounces] domain` with the relay's feedback key (made at first start
    unless `secret_file` names one: nodes sharing a queue need the same); None without."""
    if not config.bounces.domain:
        return None
    key = load_or_create_token(config.feedback_key_path, create=not config.bounces.secret_file,
                               what="[bounces] secret")
    return FeedbackTokens(key.encode("utf-8"), config.bounces.domain, config.public.url)
