"""admin: the HTTP API. `app` builds it and serves it; the routes live by topic.

Nothing is imported here: relayctl needs `admin.token` alone, and FastAPI is a large
import for a command that only makes one request.
"""
