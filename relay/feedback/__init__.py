"""feedback: mail that comes back after delivery, and the links recipients use.

With `[bounces] domain`, every copy goes out from a VERP return path of its own
(feedback.tokens); bounces, ARF complaints and mailto unsubscribes sent there are taken in
by the delivery loop (feedback.intake, reading them with feedback.reports), and broadcasts
carry one-click unsubscribe links served on `[public] listen` (feedback.unsubscribe).
"""

from __future__ import annotations

from pathlib import Path

from relay.config import BouncesSection
from relay.feedback.tokens import FeedbackTokens
from relay.secretfiles import load_or_create_token, shared_secret_missing


def configured_tokens(bounces: BouncesSection, public_url: str, key_path: Path,
                      shared: bool) -> FeedbackTokens | None:
    """The tokens of `[bounces] domain` with the relay's feedback key at `key_path` (made
    at first start, except on nodes that share a queue: they need the same, the file
    `secret_file` names, which config checks); None without."""
    if not bounces.domain:
        return None
    key = load_or_create_token(key_path, create=not shared, what="[bounces] secret",
                               missing=shared_secret_missing(key_path))
    return FeedbackTokens(key.encode("utf-8"), bounces.domain, public_url)
