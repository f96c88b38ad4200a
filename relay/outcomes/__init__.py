"""outcomes: what a delivery attempt becomes: delivered, deferred with backoff (retry), or
bounced with a DSN (dsn).
"""
