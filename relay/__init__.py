"""relay: a self-hosted outbound SMTP relay with a durable spool."""

__version__ = "0.1.0"
